"""The fill-in-the-middle transform (paper section 3.1; Bavarian et al. 2022, "Efficient Training
of Language Models to Fill in the Middle").

Applied per document (or per piece of one) before packing: with probability `rate` a document
is split at two uniform random character positions into prefix, middle and suffix and
rewritten in PSM (or, with probability `spm_rate`, SPM) order through the shared formats
module. The packer adds EOS.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Annotated, Literal

from dscoder import formats
from dscoder.config import FRACTION, NON_NEGATIVE


@dataclass(frozen=True)
class FIMConfig:
    """Fill-in-the-middle settings."""

    rate: Annotated[float, FRACTION] = 0.5
    """Share of documents rewritten as FIM (DeepSeek-Coder: 0.5)."""
    spm_rate: Annotated[float, FRACTION] = 0.0
    """Share of FIM documents in SPM order instead of PSM (DeepSeek-Coder: PSM only)."""
    split: Literal["char", "line"] = "char"
    """Where the hole may start and end: any character (DeepSeek-Coder, Bavarian et al.), or only
    at line starts, the middle being one or more whole lines (line-level FIM, as single-line
    infilling asks of a model). Small models trained briefly on character-level holes expect
    the middle to start inside a word and do not learn to fill a hole that starts a line."""
    max_chars: Annotated[int, NON_NEGATIVE] = 0
    """Cut longer documents, at line ends, into pieces of at most this many characters, each
    with its own FIM decision (0: whole documents, as DeepSeek-Coder). With short training
    sequences, whole-document FIM puts the prefix, suffix and middle in different windows and
    cannot be learned; pieces near the sequence length can (close to Bavarian et al.'s
    context-level FIM)."""
    fit_windows: bool = False
    """Cut documents at line ends into pieces that each fit in the training window they start
    in (and in `max_chars`, if set), each with its own FIM decision; the end of a window that no
    piece fits is padding, left out of the loss. No FIM example is then split between two
    windows (Bavarian et al.'s context-level FIM): with pieces laid end to end instead, most
    pieces cross a window boundary and the model sees middles whose prefix is in another
    window."""


def pieces(text: str, max_chars: int) -> list[str]:
    """`text` cut at line ends into consecutive pieces of at most `max_chars` (a longer line
    is its own piece); the whole text when `max_chars` is 0."""
    if max_chars <= 0 or len(text) <= max_chars:
        return [text]
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        if current and len(current) + len(line) > max_chars:
            out.append(current)
            current = ""
        current += line
    return out + [current] if current else out


def split_points(text: str, rng: random.Random, split: str = "char") -> tuple[int, int]:
    """Two random positions 0 <= a <= b <= len(text): uniform over characters, or, with
    `split="line"`, two different line starts (the end counts as one), so the middle is at least
    one whole line."""
    if split == "line":
        starts = sorted({0, len(text), *itertools.accumulate(len(line) + 1 for line in text.split("\n")[:-1])})
        if len(starts) >= 2:
            a, b = sorted(rng.sample(starts, 2))
            return a, b
    a, b = rng.randint(0, len(text)), rng.randint(0, len(text))
    return (a, b) if a <= b else (b, a)


def decide(text: str, cfg: FIMConfig, rng: random.Random) -> tuple[int, int, formats.FIMMode] | None:
    """None to leave `text` as it is, else where its middle starts and ends and the order, as
    `rng` decides."""
    if cfg.rate <= 0 or rng.random() >= cfg.rate:
        return None
    a, b = split_points(text, rng, cfg.split)
    return a, b, "spm" if cfg.spm_rate > 0 and rng.random() < cfg.spm_rate else "psm"


def rewrite(text: str, decision: tuple[int, int, formats.FIMMode] | None) -> str:
    """`text` as `decide` had it: unchanged for None, else as a FIM document."""
    if decision is None:
        return text
    a, b, mode = decision
    return formats.fim_document(text[:a], text[a:b], text[b:], mode)


def apply(text: str, cfg: FIMConfig, rng: random.Random) -> str:
    """`text` unchanged, or rewritten as a FIM document, as `rng` decides."""
    return rewrite(text, decide(text, cfg, rng))
