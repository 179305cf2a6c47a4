"""Language detection by file extension, file name and shebang (paper section 2.1 keeps 87
programming languages; this table covers the ones the pipeline treats specially and the common
rest)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

# One literal table: extension (lower case, with the dot) -> language name.
EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".java": "java",
    ".cs": "csharp",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".ipp": "cpp",
    ".tpp": "cpp",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".php": "php",
    ".rb": "ruby",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".swift": "swift",
    ".lua": "lua",
    ".pl": "perl",
    ".pm": "perl",
    ".r": "r",
    ".jl": "julia",
    ".hs": "haskell",
    ".sql": "sql",
    ".css": "css",
    ".scss": "css",
    ".cmake": "cmake",
    ".mk": "makefile",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "restructuredtext",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".html": "html",
    ".htm": "html",
    ".xml": "xml",
    ".xsl": "xslt",
    ".xslt": "xslt",
    ".tex": "tex",
    ".txt": "text",
}

FILE_NAMES: dict[str, str] = {
    "Makefile": "makefile",
    "makefile": "makefile",
    "Dockerfile": "dockerfile",
    "CMakeLists.txt": "cmake",
    "go.mod": "gomod",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
}

# Interpreters named on a `#!` line.
SHEBANGS: dict[str, str] = {
    "python": "python",
    "python3": "python",
    "python2": "python",
    "sh": "shell",
    "bash": "shell",
    "zsh": "shell",
    "dash": "shell",
    "ksh": "shell",
    "node": "javascript",
    "nodejs": "javascript",
    "deno": "typescript",
    "ruby": "ruby",
    "perl": "perl",
    "php": "php",
    "lua": "lua",
}

# Languages whose files are code (the rest are text or data that the rules treat specially).
PROGRAMMING = frozenset(
    {
        "python",
        "java",
        "csharp",
        "c",
        "cpp",
        "javascript",
        "typescript",
        "go",
        "rust",
        "php",
        "ruby",
        "shell",
        "kotlin",
        "scala",
        "swift",
        "lua",
        "perl",
        "r",
        "julia",
        "haskell",
        "sql",
        "makefile",
        "dockerfile",
        "cmake",
    }
)

_SHEBANG = re.compile(r"^#!\s*(?:\S*/)?(?:env\s+(?:-\S+\s+)*)?([A-Za-z0-9_.+-]+)")


def detect_language(path: str, first_line: str = "") -> str | None:
    """The language of a file from its name, else its shebang line; None when unknown."""
    name = PurePosixPath(path).name
    if name in FILE_NAMES:
        return FILE_NAMES[name]
    language = EXTENSIONS.get(PurePosixPath(name).suffix.lower())
    if language is not None:
        return language
    match = _SHEBANG.match(first_line)
    if match:
        interpreter = re.sub(r"[\d.]+$", "", match.group(1)) or match.group(1)
        return SHEBANGS.get(match.group(1), SHEBANGS.get(interpreter))
    return None
