"""Scores: pass@k with the unbiased estimator (Chen et al. 2021, "Evaluating Large Language
Models Trained on Code"), and the FIM line metrics (exact match, edit similarity)."""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) passes:
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float | None:
    """Mean pass@k over tasks given (samples, correct) per task; None when some task has fewer
    than k samples."""
    if not counts or any(n < k for n, _ in counts):
        return None
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts]))


def first_line(text: str) -> str:
    """The first non-empty line of a completion, stripped (a single-line infilling answer)."""
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - distance / longer length (1.0 for identical strings)."""
    if not a and not b:
        return 1.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))


def line_scores(completion: str, reference: str) -> tuple[bool, float]:
    """(exact match, edit similarity) of a completion's line against the reference line."""
    got, want = first_line(completion), first_line(reference)
    return got == want, edit_similarity(got, want)
