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
from dscoder.repo.unionfind import UnionFind

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


# Candidate records: one per (sample, band) for the LSH bands of samples with words, and one per
# sample in an extra band (`cfg.bands`) keyed by its digest, for exact copies. `hi`/`lo` is the
# key (a band key in `hi`; the 16-byte digest in both); `index` the sample's place in input order.
KEY = np.dtype([("band", "<u2"), ("hi", "<u8"), ("lo", "<u8"), ("index", "<i8")])
# A duplicate pair: `b` matched to `a` (a < b) with estimated Jaccard `sim` (1.0 for exact copies).
PAIR = np.dtype([("a", "<i8"), ("b", "<i8"), ("sim", "<f4")])


def key_records(signatures: np.ndarray, digests: np.ndarray, first_index: int, cfg: DedupConfig) -> np.ndarray:
    """The candidate records of consecutive samples numbered from `first_index`.
    (N, num_perm) uint32, (N, 16) uint8 -> (R,) KEY."""
    n = len(signatures)
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    exact = np.empty(n, dtype=KEY)
    exact["band"] = cfg.bands
    halves = np.ascontiguousarray(digests).view("<u8").reshape(n, 2)
    exact["hi"], exact["lo"], exact["index"] = halves[:, 0], halves[:, 1], index
    worded = signatures[:, 0] != EMPTY if n else np.zeros(0, dtype=bool)
    parts = [exact]
    for band in range(cfg.bands):
        part = np.zeros(int(worded.sum()), dtype=KEY)
        part["band"], part["hi"], part["index"] = band, band_keys(signatures[worded], cfg, band), index[worded]
        parts.append(part)
    return np.concatenate(parts)


def candidate_pairs(records: np.ndarray, rows_fn: Callable[[np.ndarray], np.ndarray], cfg: DedupConfig) -> np.ndarray:
    """The duplicate pairs among `records` (KEY; all records of a key must be present): in each
    run of samples sharing a key, every member is compared with the run's first sample, and
    kept when their estimated Jaccard reaches the threshold (digest runs are exact copies).
    `rows_fn(indices)` gives those samples' signatures. -> (k,) PAIR."""
    records = records[np.lexsort((records["index"], records["lo"], records["hi"], records["band"]))]
    same = np.zeros(len(records), dtype=bool)
    if len(records) > 1:
        same[1:] = ((records["band"][1:] == records["band"][:-1]) & (records["hi"][1:] == records["hi"][:-1])
                    & (records["lo"][1:] == records["lo"][:-1]))
    starts = np.flatnonzero(~same)
    ends = np.append(starts[1:], len(records))
    found = []
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        run = records["index"][start:end]
        leader, members = run[0], run[1:]
        if records["band"][start] == cfg.bands:
            sims = np.ones(len(members), dtype=np.float32)
        else:
            sims = estimated_jaccard(rows_fn(run[:1]), rows_fn(members)).astype(np.float32)
        keep = sims >= cfg.threshold
        pairs = np.empty(int(keep.sum()), dtype=PAIR)
        pairs["a"], pairs["b"], pairs["sim"] = leader, members[keep], sims[keep]
        found.append(pairs)
    return np.concatenate(found) if found else np.empty(0, dtype=PAIR)


def clusters(n: int, pair_sets: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(roots, similarity) of samples 0..n-1 from their duplicate pairs: each sample's cluster
    survivor (its earliest member) and, for a dropped sample, its best similarity to a member it
    was matched with. The order of the pairs does not matter."""
    uf = UnionFind(n)
    similarity = np.zeros(n, dtype=np.float32)
    for pairs in pair_sets:
        uf.union_pairs(np.stack([pairs["a"], pairs["b"]], axis=1))
        np.maximum.at(similarity, pairs["b"], pairs["sim"])
    return uf.roots(), similarity


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature values. (k, P), (k, P) -> (k,)."""
    return (a == b).mean(axis=-1)


def cluster(signatures: np.ndarray, digests: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """`clusters` of samples held in memory: (N, num_perm) signatures, (N, 16) digests."""
    pairs = candidate_pairs(key_records(signatures, digests, 0, cfg), lambda idx: signatures[idx], cfg)
    return clusters(len(signatures), [pairs])
