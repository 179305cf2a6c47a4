"""Plain texts for tokenizer training and instruction making: the files under folders (only those
of a known language), files named directly, or the samples of a built corpus folder."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from dscoder.errors import UserError
from dscoder.repo.collect import DEFAULT_MAX_FILE_BYTES, CollectConfig, SourceFile, read_folder, read_text
from dscoder.repo.languages import detect_language

log = logging.getLogger("dscoder")


def iter_files(
    inputs: Iterable[str | os.PathLike], skips: Counter, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Iterator[SourceFile]:
    """Text files from files and folders (for tokenizer training). Inside folders only files of
    a known language are read; a file named directly is always read."""
    cfg = CollectConfig(max_file_bytes=max_file_bytes)
    for item in inputs:
        root = Path(item)
        if not root.exists():
            raise UserError(f"input not found: {root}")
        if root.is_dir():
            yield from read_folder(root, cfg, skips)
            continue
        text = read_text(root, skips)
        if text is not None:
            yield SourceFile(root.name, text, detect_language(root.name, text[:200].split("\n", 1)[0]))


def read_texts(inputs: Iterable[str | os.PathLike], skips: Counter, max_bytes: int | None = None) -> list[str]:
    """Texts of the files under `inputs` (as `iter_files`) or of the samples of corpus folders,
    up to `max_bytes` characters, with a progress bar; skips are counted and logged."""
    from dscoder.console import progress
    from dscoder.data import corpus

    def all_texts() -> Iterator[str]:
        for item in inputs:
            if corpus.is_corpus(item):
                yield from corpus.iter_texts(item)
            else:
                yield from (source.text for source in iter_files([item], skips))

    texts, total = [], 0
    with progress(desc="reading", unit=" texts") as bar:
        for text in all_texts():
            if max_bytes is not None and total + len(text) > max_bytes:
                log.info("read %d characters, the limit: the rest is not read", total)
                break
            texts.append(text)
            total += len(text)
            bar.update()
    if skips:
        log.info("skipped files: %s", format_skips(skips))
    return texts


def format_skips(skips: Counter) -> str:
    """`binary 3, too_large 1` for a log line; empty when nothing was skipped."""
    return ", ".join(f"{reason} {count}" for reason, count in sorted(skips.items()))
