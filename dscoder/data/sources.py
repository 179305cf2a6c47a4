"""Reading source files safely: folders walked without following links out of them, binary
files and oversized files skipped, non-UTF-8 text decoded with a counted fallback.

Every skip is counted by reason in a `collections.Counter` the caller owns and reports.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from dscoder.data.languages import detect_language
from dscoder.errors import UserError

# Folders that hold tool state, caches or installed third-party trees, never a repository's own code.
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".mypy_cache",
     ".pytest_cache", ".idea", ".vscode", "bower_components", "site-packages", "dist-packages"}
)
DEFAULT_MAX_FILE_BYTES = 1_000_000
log = logging.getLogger("dscoder")


@dataclass(frozen=True)
class SourceFile:
    """One text file of a source tree."""

    path: str  # relative to the root it was found under, with "/" separators
    text: str
    language: str | None


def decode(data: bytes, skips: Counter) -> str | None:
    """Bytes as text: UTF-8 (BOM dropped), else Latin-1 counted as a fallback; None for binary."""
    if b"\x00" in data[:8192]:
        skips["binary"] += 1
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        skips["non_utf8_decoded_latin1"] += 1
        return data.decode("latin-1")


def walk(root: Path, skips: Counter) -> Iterator[Path]:
    """Files under `root` in a stable order, skipping tool folders and links that leave it."""
    root_real = root.resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root_real) or not target.is_file():
                    skips["symlink_outside"] += 1
                    continue
            yield path


def iter_files(
    inputs: Iterable[str | os.PathLike],
    skips: Counter,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    languages: frozenset[str] | None = None,
) -> Iterator[SourceFile]:
    """Text files from files and folders. Inside folders only files of a known language are read
    (of `languages`, when given); a file named directly is always read."""
    for item in inputs:
        root = Path(item)
        if not root.exists():
            raise UserError(f"input not found: {root}")
        paths = [root] if root.is_file() else walk(root, skips)
        for path in paths:
            named = path == root
            rel = path.name if named else path.relative_to(root).as_posix()
            language = detect_language(rel) or detect_language(rel, _first_line(path))
            if not named and (language is None or (languages is not None and language not in languages)):
                skips["other_language" if language else "unknown_language"] += 1
                continue
            try:
                if path.stat().st_size > max_file_bytes:
                    skips["too_large"] += 1
                    continue
                data = path.read_bytes()
            except OSError:
                skips["unreadable"] += 1
                continue
            text = decode(data, skips)
            if text is not None:
                yield SourceFile(rel, text, language)


def read_texts(inputs: Iterable[str | os.PathLike], skips: Counter, max_bytes: int | None = None) -> list[str]:
    """Texts of the files under `inputs` (as `iter_files`), up to `max_bytes` characters, with a
    progress bar; skips are counted and logged."""
    from tqdm import tqdm

    texts, total = [], 0
    with tqdm(desc="reading", unit=" files", file=sys.stderr) as bar:
        for source in iter_files(inputs, skips):
            if max_bytes is not None and total + len(source.text) > max_bytes:
                log.info("read %d characters, the limit: the remaining files are not read", total)
                break
            texts.append(source.text)
            total += len(source.text)
            bar.update()
    if skips:
        log.info("skipped files: %s", format_skips(skips))
    return texts


def _first_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.readline(200).decode("utf-8", "replace")
    except OSError:
        return ""


def installed_python_roots() -> list[Path]:
    """This interpreter's own Python code: the standard library and the installed packages."""
    paths = sysconfig.get_paths()
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        path = Path(paths[key])
        if path.is_dir() and path not in roots:
            roots.append(path)
    return roots


def format_skips(skips: Counter) -> str:
    """`binary 3, too_large 1` for a log line; empty when nothing was skipped."""
    return ", ".join(f"{reason} {count}" for reason, count in sorted(skips.items()))
