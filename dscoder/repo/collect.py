"""Collecting repositories (paper section 2.1): folders, git repositories (tracked files at
HEAD) and archives, read safely.

Binary files, files over a size limit, links leaving the repository, tool-state folders and
vendored, minified, generated or lock files are skipped; non-UTF-8 text is decoded as Latin-1.
Every skip is counted by reason in a `collections.Counter` the caller owns and reports.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import subprocess
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterator

from dscoder.config import AT_LEAST_ONE
from dscoder.repo.languages import detect_language

# Folders that hold tool state, caches or installed environments, never a repository's own code.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".mypy_cache",
        ".pytest_cache",
        ".idea",
        ".vscode",
        "site-packages",
        "dist-packages",
    }
)
# Well-known markers of code a repository carries but did not write.
VENDORED_DIRS = frozenset(
    {
        "node_modules",
        "bower_components",
        "jspm_packages",
        "vendor",
        "vendors",
        "third_party",
        "third-party",
        "thirdparty",
        "3rdparty",
        "Pods",
        "Carthage",
    }
)
MINIFIED = re.compile(r"(\.min\.(js|css)|-min\.js|\.bundle\.js|\.packed\.js)$", re.I)
GENERATED_NAME = re.compile(
    r"(_pb2(_grpc)?\.pyi?|\.pb\.(go|cc|h)|\.g\.(cs|dart)|\.designer\.cs|[._]generated\.\w+)$", re.I
)
LOCK_FILES = frozenset(
    {
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "Cargo.lock",
        "poetry.lock",
        "Pipfile.lock",
        "composer.lock",
        "Gemfile.lock",
        "go.sum",
        "uv.lock",
    }
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
DEFAULT_MAX_FILE_BYTES = 1_000_000
log = logging.getLogger("dscoder")


@dataclass(frozen=True)
class CollectConfig:
    """What the collect step reads."""

    max_file_bytes: Annotated[int, AT_LEAST_ONE] = DEFAULT_MAX_FILE_BYTES
    """Largest file read, in bytes."""
    skip_vendored: bool = True
    """Skip vendored trees, minified bundles, generated files and lock files."""


@dataclass(frozen=True)
class SourceFile:
    """One text file of a repository."""

    path: str  # relative to the repository root, with "/" separators
    text: str
    language: str | None


@dataclass
class Repository:
    """A repository's text files, sorted by path."""

    name: str
    source: str  # where it was read from
    files: list[SourceFile] = field(default_factory=list)


def path_skip_reason(path: str) -> str | None:
    """Why a path is not the repository's own code (vendored, minified, generated, lock file)."""
    parts = path.split("/")
    if any(part in VENDORED_DIRS for part in parts[:-1]):
        return "vendored"
    name = parts[-1]
    if name in LOCK_FILES:
        return "lock_file"
    if MINIFIED.search(name):
        return "minified"
    if GENERATED_NAME.search(name):
        return "generated_name"
    return None


def admit(path: str, size: int, first_line, cfg: CollectConfig, skips: Counter) -> str | None:
    """The language of a file worth reading, or None with the reason counted. `first_line()`
    is called only for files whose name says nothing (shebang detection)."""
    if cfg.skip_vendored and (reason := path_skip_reason(path)):
        skips[reason] += 1
        return None
    language = detect_language(path) or detect_language(path, first_line())
    if language is None:
        skips["unknown_language"] += 1
        return None
    if size > cfg.max_file_bytes:
        skips["too_large"] += 1
        return None
    return language


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


def _line(data: bytes) -> str:
    return data[:200].split(b"\n", 1)[0].decode("utf-8", "replace")


def walk(root: Path, skips: Counter, skip_vendored: bool = True) -> Iterator[Path]:
    """Files under `root` in a stable order, skipping tool folders, vendored trees and links
    that leave it."""
    root_real = root.resolve()
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=lambda e: skips.update(["unreadable_dir"])):
        kept = []
        for d in sorted(dirs):
            if d in SKIPPED_DIRS:
                continue
            if skip_vendored and d in VENDORED_DIRS:
                skips["vendored_dir"] += 1
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root_real) or not target.is_file():
                    skips["symlink_outside" if target.exists() else "broken_symlink"] += 1
                    continue
            yield path


def read_text(path: Path, skips: Counter) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        skips["unreadable"] += 1
        return None
    return decode(data, skips)


def read_folder(root: Path, cfg: CollectConfig, skips: Counter) -> list[SourceFile]:
    files = []
    for path in walk(root, skips, cfg.skip_vendored):
        rel = path.relative_to(root).as_posix()
        try:
            language = admit(rel, path.stat().st_size, lambda path=path: _first_line(path), cfg, skips)
        except OSError:
            skips["unreadable"] += 1
            continue
        text = None if language is None else read_text(path, skips)
        if text is not None:
            files.append(SourceFile(rel, text, language))
    return files


def _git(root: Path, *args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(["git", "-C", str(root), *args], input=input, capture_output=True)
    if result.returncode != 0:
        raise OSError(result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or "git failed")
    return result.stdout


def read_git(root: Path, cfg: CollectConfig, skips: Counter) -> list[SourceFile]:
    """The files tracked at HEAD (not the working tree): links and submodules are skipped."""
    try:
        listing = _git(root, "ls-tree", "-r", "-l", "-z", "--full-tree", "HEAD")
    except OSError:  # no commit yet: an empty repository (counted by the caller)
        return []
    blobs: list[tuple[str, str, int]] = []
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, raw_path = entry.partition(b"\t")
        mode, kind, sha, size = meta.split()
        path = raw_path.decode("utf-8", "surrogateescape")
        if mode == b"120000":
            skips["symlink"] += 1
        elif kind != b"blob":
            skips["submodule"] += 1
        else:
            blobs.append((sha.decode(), path, int(size)))
    contents = _cat_blobs(root, [sha for sha, _, _ in blobs])
    files = []
    for sha, path, size in blobs:
        data = contents[sha]
        language = admit(path, size, lambda data=data: _line(data), cfg, skips)
        if language is None:
            continue
        text = decode(data, skips)
        if text is not None:
            files.append(SourceFile(path, text, language))
    return sorted(files, key=lambda f: f.path)


def _cat_blobs(root: Path, shas: list[str]) -> dict[str, bytes]:
    out = _git(root, "cat-file", "--batch", input="".join(s + "\n" for s in shas).encode())
    contents, pos = {}, 0
    for _ in shas:
        header_end = out.index(b"\n", pos)
        sha, _, size = out[pos:header_end].split()
        start = header_end + 1
        contents[sha.decode()] = out[start : start + int(size)]
        pos = start + int(size) + 1
    return contents


def _safe_member(name: str) -> str | None:
    """An archive member's path inside the repository, or None when it would leave it."""
    path = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    if name.startswith("/") or path.startswith("..") or path in ("", "."):
        return None
    return path


def read_archive(path: Path, cfg: CollectConfig, skips: Counter) -> list[SourceFile]:
    """The regular files of a tar or zip archive; a single top-level folder is stripped."""
    entries: list[tuple[str, int, object]] = []
    if path.name.lower().endswith(".zip"):
        archive = zipfile.ZipFile(path)
        for info in archive.infolist():
            if info.is_dir():
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                skips["symlink"] += 1
                continue
            entries.append((info.filename, info.file_size, info))
        read = archive.read
    else:
        archive = tarfile.open(path, "r:*")
        for member in archive.getmembers():
            if member.issym() or member.islnk():
                skips["symlink"] += 1
            elif member.isfile():
                entries.append((member.name, member.size, member))

        def read(member):
            return archive.extractfile(member).read()

    with archive:
        safe = []
        for name, size, handle in entries:
            rel = _safe_member(name)
            if rel is None:
                skips["unsafe_path"] += 1
            else:
                safe.append((rel, size, handle))
        tops = {rel.split("/", 1)[0] for rel, _, _ in safe}
        strip = len(tops) == 1 and all("/" in rel for rel, _, _ in safe)
        files = []
        for rel, size, handle in sorted(safe, key=lambda e: e[0]):
            rel = rel.split("/", 1)[1] if strip else rel
            if cfg.skip_vendored and any(part in SKIPPED_DIRS for part in rel.split("/")[:-1]):
                continue
            cache: dict[str, bytes] = {}

            def head(handle=handle, cache=cache) -> str:
                cache["data"] = read(handle)
                return _line(cache["data"])

            language = admit(rel, size, head, cfg, skips)
            if language is None:
                continue
            text = decode(cache.get("data") or read(handle), skips)
            if text is not None:
                files.append(SourceFile(rel, text, language))
        return files


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def repository_name(path: Path) -> str:
    """A repository's name: its folder or archive name without the archive suffix."""
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_repository(path: Path, cfg: CollectConfig, skips: Counter, name: str | None = None) -> Repository | None:
    """A folder, git repository or archive as a Repository; None (counted and logged) when it
    cannot be read."""
    name = name or repository_name(path)
    try:
        if is_archive(path):
            files = read_archive(path, cfg, skips)
        elif (path / ".git").exists():
            files = read_git(path, cfg, skips)
        elif path.is_dir():
            files = read_folder(path, cfg, skips)
        else:
            raise OSError("not a folder, git repository or archive")
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        skips["unreadable_repository"] += 1
        log.warning("skipped repository %s: %s", path, exc)
        return None
    if not files:
        skips["empty_repository"] += 1
    return Repository(name, str(path), files)


def _first_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.readline(200).decode("utf-8", "replace")
    except OSError:
        return ""
