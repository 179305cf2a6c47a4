"""Word n-gram hashing with numpy, shared by near-dedup (shingles) and decontamination.

A word is a run of ASCII letters, digits and underscores (BigCode's `[^A-Za-z_0-9]` split);
everything else separates words. Words are hashed with a polynomial hash over their bytes and
n-grams by a second polynomial over word hashes, all in wrapping 64-bit arithmetic, so a text is
hashed in a handful of vectorised passes instead of a Python loop per word. A word's polynomial
is read off prefix sums over the whole text: the sum over its bytes of b * base**i (i counted
from the start of the text), times base**-start (base is odd, so it has an inverse mod 2**64).
"""

from __future__ import annotations

import numpy as np

# byte -> its value plus one inside a word, 0 outside (as is, and with A-Z lowercased)
_WORD_VALUES = bytes(b + 1 if chr(b).isascii() and (chr(b).isalnum() or b == ord("_")) else 0 for b in range(256))
_WORD_VALUES_LOWER = bytes(ord(chr(b).lower()) + 1 if _WORD_VALUES[b] else 0 for b in range(256))

_BYTE_BASE = np.uint64(0x100000001B3)  # odd, so its powers never vanish mod 2**64
_BYTE_BASE_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))
_GRAM_BASE = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x2545F4914F6CDD1D)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0 .. base**(n - 1) mod 2**64: a cumulative product for the first few thousand, then
    by doubling (a cumulative product runs one element at a time, slowly on long arrays)."""
    out = np.empty(max(n, 1), dtype=np.uint64)
    done = min(out.size, 4096)
    out[:done] = base
    out[0] = 1
    np.cumprod(out[:done], out=out[:done])
    with np.errstate(over="ignore"):
        while done < n:
            step = min(done, n - done)
            np.multiply(out[:step], out[done - 1] * base, out=out[done : done + step])
            done += step
    return out


def mix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit finaliser (splitmix64), so structured inputs give well-spread hashes."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(text: str, lowercase: bool = False) -> np.ndarray:
    """One 64-bit hash per word of `text`, in order. Shape (n_words,)."""
    raw = text.encode("utf-8", "surrogatepass")
    values = np.frombuffer(raw.translate(_WORD_VALUES_LOWER if lowercase else _WORD_VALUES), dtype=np.uint8)
    edges = np.flatnonzero(np.diff(values != 0, prepend=False, append=False))  # word starts and ends, alternating
    if edges.size == 0:
        return np.empty(0, dtype=np.uint64)
    starts, ends = edges[0::2], edges[1::2]
    n = int(ends[-1])
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(values[:n] * _powers(_BYTE_BASE, n), out=prefix[1:])
        sums = (prefix[ends] - prefix[starts]) * _powers(_BYTE_BASE_INVERSE, n)[starts]
        return mix64(sums ^ (ends - starts).astype(np.uint64))


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the word n-grams of `words` (from `word_hashes`). Shape (max(len - n + 1, 0),)."""
    count = words.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        out = words[:count] * _SEED
        for k in range(1, n):
            out = out * _GRAM_BASE + words[k : k + count]
        return mix64(out)


def shingles(text: str, n: int, lowercase: bool = False) -> np.ndarray:
    """The word n-gram hashes of `text`; a text of fewer than n words is one shingle of all of
    them (so short files still get a signature). Shape (k,)."""
    words = word_hashes(text, lowercase)
    if words.size == 0:
        return words
    return ngram_hashes(words, min(n, words.size))
