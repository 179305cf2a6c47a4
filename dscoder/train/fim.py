"""The fill-in-the-middle transform (paper section 3.1; Bavarian et al. 2022, "Efficient Training
of Language Models to Fill in the Middle").

Applied per document before packing: with probability `rate` a document is split at two uniform
random character positions into prefix, middle and suffix and rewritten in PSM (or, with
probability `spm_rate`, SPM) order through the shared formats module. The packer adds EOS.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dscoder import formats


@dataclass(frozen=True)
class FIMConfig:
    """Fill-in-the-middle settings."""

    rate: float = 0.5
    """Share of documents rewritten as FIM (DeepSeek-Coder: 0.5)."""
    spm_rate: float = 0.0
    """Share of FIM documents in SPM order instead of PSM (DeepSeek-Coder: PSM only)."""


def split_points(length: int, rng: random.Random) -> tuple[int, int]:
    """Two uniform random character positions 0 <= a <= b <= length."""
    a, b = rng.randint(0, length), rng.randint(0, length)
    return (a, b) if a <= b else (b, a)


def apply(text: str, cfg: FIMConfig, rng: random.Random) -> str:
    """`text` unchanged, or rewritten as a FIM document, as `rng` decides."""
    if cfg.rate <= 0 or rng.random() >= cfg.rate:
        return text
    a, b = split_points(len(text), rng)
    mode = "spm" if cfg.spm_rate > 0 and rng.random() < cfg.spm_rate else "psm"
    return formats.fim_document(text[:a], text[a:b], text[b:], mode)
