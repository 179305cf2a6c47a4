"""Word n-gram hashing with numpy, shared by near-dedup (shingles) and decontamination.

A word is a run of ASCII letters, digits and underscores (BigCode's `[^A-Za-z_0-9]` split);
everything else separates words. Words are hashed with a polynomial hash over their bytes and
n-grams by a second polynomial over word hashes, all in wrapping 64-bit arithmetic, so a text is
hashed in a handful of vectorised passes instead of a Python loop per word.
"""

from __future__ import annotations

import numpy as np

_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")] = True
_LOWER = np.arange(256, dtype=np.uint64)
_LOWER[ord("A"):ord("Z") + 1] += 32

_BYTE_BASE = np.uint64(0x100000001B3)  # odd, so its powers never vanish mod 2**64
_GRAM_BASE = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x2545F4914F6CDD1D)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(max(n, 1), base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit finaliser (splitmix64), so structured inputs give well-spread hashes."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(text: str, lowercase: bool = False) -> np.ndarray:
    """One 64-bit hash per word of `text`, in order. Shape (n_words,)."""
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if data.size == 0:
        return np.empty(0, dtype=np.uint64)
    is_word = _WORD_BYTES[data]
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    if starts.size == 0:
        return np.empty(0, dtype=np.uint64)
    ends = np.flatnonzero(edges == -1)
    lengths = ends - starts
    # Position of each word byte inside its word, to weight it by base**position.
    word_bytes = np.flatnonzero(is_word)
    offsets = word_bytes - np.repeat(starts, lengths)
    values = (_LOWER[data[word_bytes]] if lowercase else data[word_bytes].astype(np.uint64)) + np.uint64(1)
    with np.errstate(over="ignore"):
        weighted = values * _powers(_BYTE_BASE, int(lengths.max()))[offsets]
        sums = np.add.reduceat(weighted, np.concatenate(([0], np.cumsum(lengths)[:-1])))
        return mix64(sums ^ lengths.astype(np.uint64))


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the word n-grams of `words` (from `word_hashes`). Shape (max(len - n + 1, 0),)."""
    count = words.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        out = words[:count] * _SEED
        for k in range(1, n):
            out = out * _GRAM_BASE + words[k:k + count]
        return mix64(out)


def shingles(text: str, n: int, lowercase: bool = False) -> np.ndarray:
    """The word n-gram hashes of `text`; a text of fewer than n words is one shingle of all of
    them (so short files still get a signature). Shape (k,)."""
    words = word_hashes(text, lowercase)
    if words.size == 0:
        return words
    return ngram_hashes(words, min(n, words.size))
