"""Repository-level near-deduplication: MinHash signatures, LSH banding, clusters, survivors
(paper section 2.4: "MinHash over the concatenated repo-level sample, so a repository is kept or
dropped whole").

Signatures use `num_perm` multiply-shift hash functions over 5-gram word shingles (BigCode's
setting). Two samples are duplicates when their estimated Jaccard similarity (the share of equal
signature values) reaches `threshold`. LSH banding only proposes the candidate pairs to check, so
its bands x rows are derived from the threshold to propose nearly every pair at or above it
(`banding`): BigCode's 25 x 10 for 0.7 balances false candidates against missed ones, as if the
candidates were the answer, and proposes only half the pairs at 0.7 and three quarters at 0.75.
The check then keeps unrelated samples that merely collide in one band apart. The survivor of a
cluster is its earliest sample in input order, so the result does not depend on how the work was
split.
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
    threshold: Annotated[float, FRACTION] = 0.7
    """Estimated Jaccard similarity from which two samples are duplicates (the LSH bands follow
    from it and num_perm)."""
    lowercase: bool = False
    """Lowercase words before shingling."""
    seed: Seed = 42
    """Seed of the hash functions (signatures are only comparable for the same seed)."""


def check(cfg: DedupConfig) -> None:
    from dscoder.errors import UserError

    if not 0 < cfg.threshold <= 1 or cfg.ngram < 1:
        raise UserError("dedup: threshold must be in (0, 1] and ngram at least 1")


# The chance that a pair of samples exactly at the threshold shares at least one band, so that
# its similarity is checked at all; pairs above the threshold are proposed more surely still.
CANDIDATE_RECALL = 0.99


@lru_cache(maxsize=16)
def banding(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) of the LSH: the most rows per band (the fewest chance candidates to check)
    with which a pair at the threshold still becomes a candidate with probability
    CANDIDATE_RECALL, using as many of the num_perm values as fit (0.7 and 256: 42 x 6)."""
    for rows in range(cfg.num_perm, 0, -1):
        bands = cfg.num_perm // rows
        if 1 - (1 - cfg.threshold**rows) ** bands >= CANDIDATE_RECALL:
            return bands, rows
    return cfg.num_perm, 1


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
            block = values[start : start + 512, None] * multipliers[None, :]
            np.minimum(out, block.min(axis=0), out=out)
    return (out >> np.uint64(32)).astype(np.uint32)


def text_digest(text: str) -> bytes:
    """Exact-duplicate key of a sample."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One 64-bit key per signature for `band` of `rows` values. (N, num_perm) -> (N,)."""
    cols = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.full(cols.shape[0], np.uint64(band + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(cols.shape[1]):
            key = (key * np.uint64(0x100000001B3)) ^ cols[:, j]
            key = key * np.uint64(0xBF58476D1CE4E5B9)
    return key


# Candidate records: one per (sample, band) for the LSH bands of samples with words, and one per
# sample in an extra band (number `bands`, after the LSH's) keyed by its digest, for exact copies. `hi`/`lo` is the
# key (a band key in `hi`; the 16-byte digest in both); `index` the sample's place in input order.
KEY = np.dtype([("band", "<u2"), ("hi", "<u8"), ("lo", "<u8"), ("index", "<i8")])
# A duplicate pair: `b` matched to `a` (a < b) with estimated Jaccard `sim` (1.0 for exact copies).
PAIR = np.dtype([("a", "<i8"), ("b", "<i8"), ("sim", "<f4")])


def key_records(signatures: np.ndarray, digests: np.ndarray, first_index: int, cfg: DedupConfig) -> np.ndarray:
    """The candidate records of consecutive samples numbered from `first_index`.
    (N, num_perm) uint32, (N, 16) uint8 -> (R,) KEY."""
    n = len(signatures)
    bands, rows = banding(cfg)
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    exact = np.empty(n, dtype=KEY)
    exact["band"] = bands
    halves = np.ascontiguousarray(digests).view("<u8").reshape(n, 2)
    exact["hi"], exact["lo"], exact["index"] = halves[:, 0], halves[:, 1], index
    worded = signatures[:, 0] != EMPTY if n else np.zeros(0, dtype=bool)
    parts = [exact]
    for band in range(bands):
        part = np.zeros(int(worded.sum()), dtype=KEY)
        part["band"], part["hi"], part["index"] = band, band_keys(signatures[worded], band, rows), index[worded]
        parts.append(part)
    return np.concatenate(parts)


def candidate_pairs(records: np.ndarray, rows_fn: Callable[[np.ndarray], np.ndarray], cfg: DedupConfig) -> np.ndarray:
    """The duplicate pairs among `records` (KEY; all records of a key must be present): in each
    run of samples sharing a key, every member is paired with the run's earliest sample; a pair
    found in several bands is checked once, and kept when its estimated Jaccard reaches the
    threshold (digest runs are exact copies, kept unchecked). `rows_fn(indices)` gives those
    samples' signatures. -> (k,) PAIR, by (a, b).

    Memory: beside the records (26 bytes each), their sort order (8 bytes each) and, one at a
    time, one field in that order: the records are never copied whole."""
    exact_band = banding(cfg)[0]
    n = len(records)
    order = np.lexsort((records["lo"], records["hi"], records["band"]))  # (R,) by key
    repeat = np.zeros(n, dtype=bool)  # (R,) the record at this place has the key of the one before
    repeat[1:] = True
    for name in ("band", "hi", "lo"):
        field = records[name][order]
        repeat[1:] &= field[1:] == field[:-1]
        del field
    in_run = repeat.copy()
    in_run[:-1] |= repeat[1:]  # a member of a run of two or more
    places = np.flatnonzero(in_run)  # (M,) the runs' records, in key order
    del in_run
    picked = order[places]
    del order
    index, band = records["index"][picked], records["band"][picked]
    starts = np.flatnonzero(~repeat[places])  # (runs,) where each run starts among the M
    if not len(starts):
        return np.empty(0, dtype=PAIR)
    lengths = np.diff(np.append(starts, len(places)))
    leader = np.repeat(np.minimum.reduceat(index, starts), lengths)
    exact = np.repeat(band[starts] == exact_band, lengths)
    member = index != leader
    a, b, exact = leader[member], index[member], exact[member]
    by_pair = np.lexsort((~exact, b, a))  # each pair once: as an exact copy when it is one
    a, b, exact = a[by_pair], b[by_pair], exact[by_pair]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, exact = a[first], b[first], exact[first]
    sims = np.ones(len(a), dtype=np.float32)
    near = np.flatnonzero(~exact)
    for start in range(0, len(near), 4096):  # (4096, num_perm) signatures of each side at a time
        part = near[start : start + 4096]
        sims[part] = estimated_jaccard(rows_fn(a[part]), rows_fn(b[part]))
    keep = sims >= cfg.threshold
    pairs = np.empty(int(keep.sum()), dtype=PAIR)
    pairs["a"], pairs["b"], pairs["sim"] = a[keep], b[keep], sims[keep]
    return pairs


def clusters(n: int, pair_sets: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(roots, similarity) of samples 0..n-1 from their duplicate pairs: each sample's cluster
    survivor (its earliest member) and, for a dropped sample, its best similarity to a member it
    was matched with: an earlier one, or for a sample joined to its cluster only through later
    ones (b matches a and c, a does not match c), a later one. The order of the pairs does not
    matter."""
    uf = UnionFind(n)
    to_earlier = np.zeros(n, dtype=np.float32)
    to_later = np.zeros(n, dtype=np.float32)
    for pairs in pair_sets:
        uf.union_pairs(np.stack([pairs["a"], pairs["b"]], axis=1))
        np.maximum.at(to_earlier, pairs["b"], pairs["sim"])
        np.maximum.at(to_later, pairs["a"], pairs["sim"])
    return uf.roots(), np.where(to_earlier > 0, to_earlier, to_later)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature values. (k, P), (k, P) -> (k,)."""
    return (a == b).mean(axis=-1)


def cluster(signatures: np.ndarray, digests: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """`clusters` of samples held in memory: (N, num_perm) signatures, (N, 16) digests."""
    pairs = candidate_pairs(key_records(signatures, digests, 0, cfg), lambda idx: signatures[idx], cfg)
    return clusters(len(signatures), [pairs])
