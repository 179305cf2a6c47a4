"""Parsing source files once, for both quality screening (does it parse?) and dependency
extraction (what does it import?).

Python uses the interpreter's own parser (the authority on what is valid Python), and its imports
are read from the text once it is known to be valid; the other languages use the tree-sitter
grammar wheels, whose ERROR and MISSING nodes mark what does not parse.
"""

from __future__ import annotations

import ast
import gc
import re
import symtable
import unicodedata
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dscoder.errors import UserError

# language -> (grammar module, function returning the language pointer)
GRAMMARS = {
    "java": ("tree_sitter_java", "language"),
    "csharp": ("tree_sitter_c_sharp", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}
PARSED_LANGUAGES = frozenset(GRAMMARS) - {"tsx"} | {"python"}


@dataclass
class Parsed:
    """A parsed file. Python keeps only its import statements (`python_imports`); other
    languages keep their tree-sitter Tree (C memory)."""

    language: str
    tree: Any
    error_fraction: float  # share of the source inside error nodes (1.0: does not parse)
    error: str = ""
    grammar: str = ""  # the tree-sitter grammar used ("tsx" for .tsx files)
    python_imports: list[tuple[str, int, list[str]]] | None = None


@contextmanager
def _gc_paused():
    """An AST holds no reference cycles, but building one allocates millions of objects, and
    the cyclic collector would walk them again and again (3x slower on large files)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@lru_cache(maxsize=None)
def grammar(language: str):
    """The tree-sitter Language for `language` (grammar wheels are imported on first use)."""
    import importlib

    from tree_sitter import Language

    module_name, function = GRAMMARS[language]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(
            f"parsing {language} needs the {module_name.replace('_', '-')} grammar: pip install 'dscoder[data]'"
        ) from None
    return Language(getattr(module, function)())


@lru_cache(maxsize=None)
def _parser(language: str):
    from tree_sitter import Parser

    return Parser(grammar(language))


def parse(text: str, language: str, path: str = "") -> Parsed | None:
    """Parse `text`; None for languages without a parser here. `path` picks the TSX grammar for
    `.tsx` files."""
    if language == "python":
        error = python_syntax_error(text)
        if error:
            return Parsed(language, None, 1.0, error)
        return Parsed(language, None, 0.0, python_imports=python_imports(text))
    if language not in GRAMMARS:
        return None
    source = text.encode("utf-8", "surrogatepass")
    name = "tsx" if path.endswith(".tsx") else language
    tree = _parser(name).parse(source)
    fraction = _error_bytes(tree.root_node) / max(len(source), 1) if tree.root_node.has_error else 0.0
    return Parsed(language, tree, fraction, "syntax errors" if tree.root_node.has_error else "", name)


def python_syntax_error(text: str) -> str:
    """What `ast.parse` finds wrong with `text` ("" when it parses).

    The symbol-table pass runs the same parser but builds no Python object per node (about 1.4x
    faster than `ast.parse`). It also rejects some files the parser accepts (`nonlocal` at module
    level, a late `from __future__` import, nesting two levels short of the parser's limit), so
    whatever it rejects is parsed again by `ast.parse`, which has the last word."""
    with warnings.catch_warnings(), _gc_paused():
        warnings.simplefilter("ignore")  # invalid escape sequences etc. still parse
        try:
            symtable.symtable(text, "<python>", "exec")
            return ""
        except Exception:
            pass
        try:
            ast.parse(text)  # the tree is freed before GC resumes
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return ""


# A left-to-right scan of valid Python 3 that sees what its tokenizer sees: strings and comments
# (which may hold the word `import`), `from ... import` and `import` keywords.
_PYTHON_SCAN = re.compile(
    r"""
    '''[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''
  | \"\"\"[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*\"\"\"
  | '[^'\\\n]*(?:\\.[^'\\\n]*)*'
  | "[^"\\\n]*(?:\\.[^"\\\n]*)*"
  | \#[^\n]*
  | from(?P<module>(?:[^\n;\#'"()\\]|\\\n)*?)(?<=[\s.])import(?=[\s(*\\])
  | import(?=[\s\\])
""",
    re.S | re.X,
)
_STATEMENT_START = frozenset(" \t\f\n;:")  # what may precede `from` or `import` starting a statement
# The imported names: up to the end of the statement, or a parenthesised list.
_NAMES = re.compile(r"\s*(?:\\\n\s*)*(?:\((?:[^)#]|\#[^\n]*)*\)|(?:[^\n;#\\]|\\\n)*)")
_COMMENT = re.compile(r"#[^\n]*")
_AS = re.compile(r"\s+as\s")


def python_imports(text: str) -> list[tuple[str, int, list[str]]]:
    """(module, level, imported names) for every import statement of `text`, however nested, as
    `ast` spells them (`from ..a import b as c`: ("a", 2, ["b"])). `text` must be valid Python."""
    last = text.rfind("import")
    if last < 0:
        return []
    if "\r" in text:  # the tokenizer reads \r\n and a lone \r as \n
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        last = text.rfind("import")
    found, pos = [], 0
    while pos <= last:
        match = _PYTHON_SCAN.search(text, pos)
        if match is None:
            break
        start, pos = match.start(), match.end()
        if text[start] in "'\"#":
            continue
        if start and text[start - 1] not in _STATEMENT_START:
            pos = start + 1  # inside an identifier such as `reimport` or `datafrom`
            continue
        names = _COMMENT.sub("", _NAMES.match(text, pos).group()).replace("\\\n", " ")
        aliases = [_dotted(_AS.split(part)[0]) for part in names.strip().strip("()").split(",") if part.strip()]
        if match.group("module") is None:
            found.extend((name, 0, []) for name in aliases)
        else:
            module = "".join(match.group("module").replace("\\\n", " ").split())
            dotted = module.lstrip(".")
            found.append((_dotted(dotted), len(module) - len(dotted), aliases))
    return found


def _dotted(name: str) -> str:
    """A dotted name as `ast` holds it: no spaces, each identifier NFKC-normalised."""
    name = "".join(name.split())
    if not name.isascii():
        name = ".".join(unicodedata.normalize("NFKC", part) for part in name.split("."))
    return name


def _error_bytes(root) -> int:
    """Bytes covered by ERROR nodes (a MISSING node counts one byte), visiting only subtrees
    that contain errors."""
    total, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error:
            total += max(node.end_byte - node.start_byte, 1)
        elif node.is_missing:
            total += 1
        elif node.has_error:
            stack.extend(node.children)
    return total
