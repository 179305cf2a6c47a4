"""Decontamination against benchmark test data (paper section 2.5, after BigCode): a file that
shares any 10-gram with a benchmark task's prompt or solution is dropped; a benchmark string of 3
to 9 words is matched exactly, as a whole word sequence.

Words are `ngrams` words, lowercased. The index holds hashes only, so it is small enough to ship
to every worker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from dscoder import artifacts
from dscoder.config import AT_LEAST_ONE, NON_NEGATIVE
from dscoder.data.ngrams import ngram_hashes, word_hashes


@dataclass(frozen=True)
class DecontamConfig:
    """Decontamination settings."""

    ngram: Annotated[int, AT_LEAST_ONE] = 10
    """Words per n-gram matched against benchmark strings."""
    min_words: Annotated[int, AT_LEAST_ONE] = 3
    """Benchmark strings shorter than `ngram` but at least this long are matched whole."""
    min_informative_words: Annotated[int, NON_NEGATIVE] = 3
    """An n-gram is matched only when it holds this many words that are not numbers or single
    characters (so `0 1 2 3 4 5 6 7 8 9` or `return x + y` are not evidence of a leak)."""


@dataclass
class BenchmarkIndex:
    """Hashes of benchmark n-grams, sorted; `short[n]` holds whole strings of n words."""

    ngram: int
    long: np.ndarray
    short: dict[int, np.ndarray] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)  # hash -> "benchmark:task:field"

    def __len__(self) -> int:
        return self.long.size + sum(a.size for a in self.short.values())


_WORD = re.compile(r"[A-Za-z0-9_]+")  # the words of `ngrams.word_hashes`


def _informative(text: str, n: int) -> np.ndarray:
    """How many informative words each n-gram of `text` holds. Shape (n_words - n + 1,)."""
    flags = np.array([len(w) > 1 and not w.isdigit() for w in _WORD.findall(text)], dtype=np.int64)
    sums = np.concatenate(([0], np.cumsum(flags)))
    return sums[n:] - sums[:-n]


def build_index(strings: list[tuple[str, str]], cfg: DecontamConfig) -> BenchmarkIndex:
    """Index `(owner, text)` pairs, e.g. ("HumanEval:HumanEval/0:prompt", "def ...")."""
    long_parts: list[np.ndarray] = []
    short: dict[int, list[int]] = {}
    owners: dict[int, str] = {}
    for owner, text in strings:
        words = word_hashes(text, lowercase=True)
        n = cfg.ngram if words.size >= cfg.ngram else int(words.size)
        if n < cfg.min_words:
            continue
        hashes = ngram_hashes(words, n)[_informative(text, n) >= cfg.min_informative_words]
        if n == cfg.ngram:
            long_parts.append(hashes)
        else:
            short.setdefault(n, []).extend(hashes.tolist())
        for h in hashes.tolist():
            owners.setdefault(h, owner)
    long = np.unique(np.concatenate(long_parts)) if long_parts else np.empty(0, np.uint64)
    return BenchmarkIndex(
        cfg.ngram, long, {n: np.unique(np.array(v, dtype=np.uint64)) for n, v in short.items()}, owners
    )


def _hits(text: str, index: BenchmarkIndex):
    """The hashes of `text`'s n-grams found in the index, table by table."""
    words = word_hashes(text, lowercase=True)
    for n, table in [(index.ngram, index.long)] + sorted(index.short.items()):
        if table.size == 0 or words.size < n:
            continue
        grams = ngram_hashes(words, n)
        positions = np.minimum(np.searchsorted(table, grams), table.size - 1)
        hits = table[positions] == grams
        if hits.any():
            yield grams[hits]


def match(text: str, index: BenchmarkIndex) -> str | None:
    """The benchmark string `text` contains (its owner), or None when it is clean."""
    for grams in _hits(text, index):
        return index.owners.get(int(grams[0]), "benchmark")
    return None


def matches(text: str, index: BenchmarkIndex) -> set[str]:
    """Every owner whose n-grams `text` contains (an n-gram shared by several strings counts for
    the first one indexed)."""
    return {index.owners.get(int(h), "benchmark") for grams in _hits(text, index) for h in np.unique(grams).tolist()}


def save_index(index: BenchmarkIndex, path: Path) -> None:
    """`path.npz` (the hashes), then `path.json` (the owners): an index is complete when its
    JSON file exists."""
    arrays = {"long": index.long, **{f"short_{n}": a for n, a in index.short.items()}}
    artifacts.write_arrays(path.with_suffix(".npz"), **arrays)
    owners = {str(k): v for k, v in index.owners.items()}
    artifacts.write_json(path.with_suffix(".json"), {"ngram": index.ngram, "owners": owners}, indent=None)


def load_index(path: Path) -> BenchmarkIndex:
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    with np.load(path.with_suffix(".npz")) as data:
        short = {int(k.split("_")[1]): data[k] for k in data.files if k.startswith("short_")}
        long = data["long"]
    return BenchmarkIndex(meta["ngram"], long, short, {int(k): v for k, v in meta["owners"].items()})
