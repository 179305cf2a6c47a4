"""Artifact folders: written whole or not at all, never over an existing one by accident.

Every command that produces a folder (a tokenizer, a model, a corpus, a run) writes it through
`output_dir`: the files go to a hidden sibling folder that is renamed into place only when the
command succeeds, so an interrupted or failed command leaves nothing half-written. Each artifact
records how it was made in `dscoder.json` (the resolved config, the inputs, the version).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dscoder import __version__
from dscoder.errors import UserError

MANIFEST = "dscoder.json"


@contextmanager
def output_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` when the block finishes without error.

    An existing `path` is refused unless `force`; with `force` it is replaced only once the new
    folder is complete.
    """
    final = Path(path)
    if final.exists() and not force:
        raise UserError(f"{final} already exists (use --force to replace it)")
    if final.exists() and not final.is_dir():
        raise UserError(f"{final} exists and is not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(final)


def write_manifest(folder: str | os.PathLike, kind: str, **record: Any) -> None:
    """Record what made the artifact in `folder/dscoder.json`."""
    data = {"kind": kind, "dscoder_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data.update(record)
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    Path(folder, MANIFEST).write_text(text, encoding="utf-8")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The artifact's record, or None for folders made by other tools (e.g. a released model)."""
    path = Path(folder, MANIFEST)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable artifact record ({exc})") from None
