"""Writing files and folders: every file dscoder writes goes through here, and each appears whole
or not at all.

- A file (`write_text`, `write_json`, `write_array`, `write_arrays`, `write_table`,
  `write_figure`, `output_file`) is written under a hidden temporary name in its own folder and renamed over the
  target when complete (`os.replace`, atomic on POSIX): a reader, or a resumed command after a
  kill, sees the old file or the new one, never a part.
- A folder (`output_dir`) is built as a hidden sibling and renamed into place when the block
  finishes without error; an existing folder is refused unless `force`, and with `force` it is
  replaced only once the new one is complete, and only when dscoder wrote it (its `.dscoder`
  mark or `dscoder.json`; `check_replaceable`), never a user's own folder.
- `copy_tokenizer` copies a tokenizer's files into a model or run folder (the one place that
  knows which files a tokenizer is).
- `dscoder.json` records how an artifact was made (`write_manifest`, `read_manifest`).
Data is not forced to disk (no fsync): a power cut may lose the newest files, but a rename
never publishes a file that was cut short by a crash of the writer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from dscoder import __version__
from dscoder.errors import UserError

log = logging.getLogger("dscoder")

MANIFEST = "dscoder.json"
MARK = ".dscoder"  # in folders dscoder writes without a manifest: --force replaces only marked folders
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def make_output_folder(path: str | os.PathLike) -> Path:
    """Create a folder a command fills in place (a run, a resumable build) with dscoder's mark,
    so that `--force` may later replace it."""
    folder = make_folder(path)
    (folder / MARK).touch()
    return folder


def check_output(path: str | os.PathLike, force: bool, folder: bool) -> None:
    """Refuse, before any work, an output `path` (a file, or a `folder`) that cannot be written,
    each case with advice that works: a folder where a file goes (and the reverse), a folder
    dscoder did not write (never replaced, `--force` or not), an existing output without `force`."""
    path = Path(path)
    if not path.exists():
        return
    if folder and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    if not folder and path.is_dir():
        raise UserError(f"{path} is a folder; give the name of a file to write")
    if folder:
        check_replaceable(path)
    if not force:
        raise UserError(f"{path} already exists (use --force to replace it)")


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace (`--force`) a folder dscoder did not write: one without its mark or
    manifest and not empty, e.g. a user's own folder named by mistake."""
    folder = Path(path)
    if not folder.is_dir() or (folder / MARK).exists() or (folder / MANIFEST).exists() or not any(folder.iterdir()):
        return
    raise UserError(
        f"{folder} already exists and was not written by dscoder (no {MANIFEST} or {MARK} in it), so "
        "dscoder never replaces it, --force or not: choose another output or remove it yourself"
    )


def _temporary(path: Path, suffix: str = "partial") -> Path:
    """A fresh hidden name beside `path`, unique across processes and threads (files and
    folders made under it get the usual permissions, unlike tempfile's private ones)."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.{suffix}"


def make_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and its parents); a UserError naming it when that is impossible (a file
    in the way, no permission)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot be made ({exc.strerror}: {exc.filename})") from None
    return folder


def remove_partials(folder: str | os.PathLike) -> None:
    """Delete the temporary files a killed writer left in `folder` (not in its subfolders)."""
    for leftover in Path(folder).glob(".*.partial"):
        leftover.unlink(missing_ok=True)


@contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces `path` when the block finishes without error; a
    UserError naming `path` when it cannot be written (no permission, a full disk)."""
    path = Path(path)
    make_folder(path.parent)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename in (str(tmp), str(path)) or exc.filename is None:
            raise UserError(f"{path}: cannot be written ({exc.strerror})") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with _replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_array(path: str | os.PathLike, array) -> None:
    """One numpy array as `.npy`."""
    import numpy as np

    with _replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_arrays(path: str | os.PathLike, **arrays) -> None:
    """Named numpy arrays as one `.npz`."""
    import numpy as np

    with _replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_table(path: str | os.PathLike, table, compression: str = "zstd") -> None:
    """A pyarrow table as one parquet file."""
    import pyarrow.parquet as pq

    with _replacing(path) as tmp:
        pq.write_table(table, tmp, compression=compression)


def write_figure(path: str | os.PathLike, figure, dpi: int = 100) -> Path:
    """A matplotlib figure as an image (its format from the suffix, e.g. `.png`)."""
    path = Path(path)
    with _replacing(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


@contextmanager
def output_file(path: str | os.PathLike, force: bool = False) -> Iterator[IO[str]]:
    """A text file to write into, published at `path` when the block finishes without error;
    an existing `path` is refused unless `force`."""
    path = Path(path)
    check_output(path, force, folder=False)
    with _replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


@contextmanager
def output_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A temporary path for a writer that takes a file name (safetensors, GGUF), published at
    `path` when the block finishes without error; an existing `path` is refused unless `force`."""
    path = Path(path)
    check_output(path, force, folder=False)
    with _replacing(path) as tmp:
        yield tmp


@contextmanager
def output_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` when the block finishes without error.

    An existing `path` is refused unless `force`; with `force` it is replaced only once the new
    folder is complete.
    """
    final = Path(path)
    check_output(final, force, folder=True)
    make_folder(final.parent)
    partial = _temporary(final)
    try:
        partial.mkdir()
    except OSError as exc:
        raise UserError(f"{final}: cannot be written ({exc.strerror})") from None
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not (partial / MANIFEST).exists():  # the manifest marks it already
        (partial / MARK).touch()
    publish_dir(partial, final)


def publish_dir(complete: Path, final: Path) -> None:
    """Put the finished folder `complete` at `final`, replacing what is there only now."""
    if final.exists():
        old = _temporary(final, "old")
        os.replace(final, old)
        os.replace(complete, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(complete, final)


def copy_tokenizer(source: str | os.PathLike, target: str | os.PathLike, eos_token: str | None = None) -> Path:
    """Copy the tokenizer files of a tokenizer or model folder into `target` (created if
    missing); with `eos_token`, the copy ends sequences with that token instead."""
    source, target = Path(source), Path(target)
    for name in TOKENIZER_FILES:
        try:
            data = (source / name).read_bytes()
        except OSError as exc:
            raise UserError(f"{source}: cannot read its tokenizer file {name} ({exc.strerror})") from None
        if name == "tokenizer_config.json" and eos_token:
            config = json.loads(data)
            config["eos_token"] = eos_token
            write_json(target / name, config)
        else:
            with _replacing(target / name) as tmp:
                tmp.write_bytes(data)
    return target


def write_manifest(folder: str | os.PathLike, kind: str, **record: Any) -> None:
    """Record what made the artifact in `folder/dscoder.json`."""
    data = {"kind": kind, "dscoder_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data.update(record)
    write_json(Path(folder, MANIFEST), data)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The artifact's record, or None for folders made by other tools (e.g. a released model)."""
    path = Path(folder, MANIFEST)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable artifact record ({exc})") from None


def run_stage(out: Path, name: str, fn, seconds: dict | None = None, force_rerun: bool = False) -> dict:
    """Run `fn` unless the stage finished before; its record is kept in out/stages/NAME.json
    (and its seconds in `seconds`, when given). The resumable stages of the quickstart, the
    experiments and `adapt`."""
    seconds = {} if seconds is None else seconds
    marker = out / "stages" / f"{name}.json"
    if marker.is_file() and not force_rerun:
        record = json.loads(marker.read_text())
        log.info("[%s] done before (%.0fs): reusing", name, record.get("seconds", 0))
        seconds[name] = record.get("seconds", 0)
        return record
    log.info("[%s] ...", name)
    start = time.perf_counter()
    record = fn() or {}
    record["seconds"] = round(time.perf_counter() - start, 1)
    seconds[name] = record["seconds"]
    write_json(marker, record)
    return record
