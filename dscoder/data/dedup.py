"""Repository-level near-deduplication: MinHash signatures, LSH banding, clusters, survivors
(paper section 2.4: "MinHash over the concatenated repo-level sample, so a repository is kept or
dropped whole").

Signatures use `num_perm` multiply-shift hash functions over 5-gram word shingles (BigCode's
setting); banding follows the classic LSH scheme of `bands` x `rows`; candidate pairs are kept
only when their estimated Jaccard similarity reaches `threshold`, which keeps unrelated samples
that merely collide in one band apart. The survivor of a cluster is its earliest sample in input
order, so the result does not depend on how the work was split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Callable, Iterable

import numpy as np

from dscoder.config import AT_LEAST_ONE, FRACTION, Seed
from dscoder.data.ngrams import shingles

EMPTY = np.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class DedupConfig:
    """Near-deduplication settings (defaults near BigCode's)."""

    enabled: bool = True
    """Run exact and near deduplication."""
    ngram: Annotated[int, AT_LEAST_ONE] = 5
    """Words per shingle."""
    num_perm: Annotated[int, AT_LEAST_ONE] = 256
    """Hash functions per signature."""
    bands: Annotated[int, AT_LEAST_ONE] = 25
    """LSH bands."""
    rows: Annotated[int, AT_LEAST_ONE] = 10
    """Signature values per band (bands * rows <= num_perm)."""
    threshold: Annotated[float, FRACTION] = 0.7
    """Estimated Jaccard similarity from which two samples are duplicates."""
    lowercase: bool = False
    """Lowercase words before shingling."""
    seed: Seed = 42
    """Seed of the hash functions (signatures are only comparable for the same seed)."""


def check(cfg: DedupConfig) -> None:
    from dscoder.errors import UserError

    if cfg.bands * cfg.rows > cfg.num_perm:
        raise UserError(f"dedup: bands x rows ({cfg.bands} x {cfg.rows}) exceeds num_perm {cfg.num_perm}")
    if not 0 < cfg.threshold <= 1 or cfg.ngram < 1:
        raise UserError("dedup: threshold must be in (0, 1] and ngram at least 1")


@lru_cache(maxsize=8)
def _multipliers(num_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """The MinHash signature of `text`. Shape (num_perm,), uint32; all EMPTY for a text
    without words."""
    values = shingles(text, cfg.ngram, cfg.lowercase)
    out = np.full(cfg.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    if values.size == 0:
        return np.full(cfg.num_perm, EMPTY, dtype=np.uint32)
    multipliers = _multipliers(cfg.num_perm, cfg.seed)
    with np.errstate(over="ignore"):
        for start in range(0, values.size, 512):  # (512, num_perm) blocks stay in cache
            block = values[start:start + 512, None] * multipliers[None, :]
            np.minimum(out, block.min(axis=0), out=out)
    return (out >> np.uint64(32)).astype(np.uint32)


def text_digest(text: str) -> bytes:
    """Exact-duplicate key of a sample."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def band_keys(signatures: np.ndarray, cfg: DedupConfig, band: int) -> np.ndarray:
    """One 64-bit key per signature for `band`. (N, num_perm) -> (N,)."""
    cols = signatures[:, band * cfg.rows:(band + 1) * cfg.rows].astype(np.uint64)
    key = np.full(cols.shape[0], np.uint64(band + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(cols.shape[1]):
            key = (key * np.uint64(0x100000001B3)) ^ cols[:, j]
            key = key * np.uint64(0xBF58476D1CE4E5B9)
    return key


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        parent = self.parent.copy()
        while True:  # pointer jumping until every entry names its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature values. (k, P), (k, P) -> (k,)."""
    return (a == b).mean(axis=-1)


def cluster(
    n: int,
    digests: np.ndarray,
    band_key_fn: Callable[[int], np.ndarray],
    rows_fn: Callable[[np.ndarray], np.ndarray],
    empty: np.ndarray,
    cfg: DedupConfig,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster samples 0..n-1 (in input order): first exact duplicates by digest ((n, 16)
    uint8, from `text_digest`), then near duplicates by LSH. `band_key_fn(b)` gives every
    sample's key for band b, `rows_fn(idx)` the signatures of the samples `idx`, `empty[i]`
    marks samples without words (never near-matched).

    Returns (roots, similarity): each sample's cluster survivor and, for a dropped sample, the
    estimated Jaccard with the member it was matched to (1.0 for exact copies).
    """
    uf = UnionFind(n)
    similarity = np.zeros(n, dtype=np.float32)
    if n:
        keys = np.ascontiguousarray(digests).view(np.dtype((np.void, digests.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        copies = np.flatnonzero(first[inverse] != np.arange(n))
        uf.parent[copies] = first[inverse][copies]  # the first occurrence is always the smaller index
        similarity[copies] = 1.0
    for band in progress(range(cfg.bands)):
        keys = band_key_fn(band)
        keys = np.where(empty, np.arange(n, dtype=np.uint64) ^ np.uint64(0xA5A5A5A5A5A5A5A5), keys)
        order = np.argsort(keys, kind="stable")
        _, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
        for start, count in zip(starts[counts > 1], counts[counts > 1]):
            run = np.sort(order[start:start + count])
            if empty[run[0]]:
                continue
            leader, members = run[0], run[1:]
            sims = estimated_jaccard(rows_fn(run[:1]), rows_fn(members))
            for member, sim in zip(members, sims):
                if sim >= cfg.threshold:
                    uf.union(int(leader), int(member))
                    similarity[member] = max(similarity[member], sim)
    return uf.roots(), similarity
