"""Scores: pass@k with the unbiased estimator (Chen et al. 2021, "Evaluating Large Language
Models Trained on Code"), and the line metrics, exact match and edit similarity, as CrossCodeEval
defines them (Ding et al. 2023; the DeepSeek-Coder paper's repository-level benchmark, Table 7).
Every report of dscoder that names these two metrics computes them here."""

from __future__ import annotations

import difflib

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


def exact_match(prediction: str, reference: str) -> bool:
    """Code exact match as CrossCodeEval computes it (scripts/eval_metric.py, `em_label`): the
    non-blank lines of the two texts, each stripped, are the same. For one line: equal once the
    surrounding whitespace (indentation included) is dropped."""
    return _lines(prediction) == _lines(reference)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def edit_similarity(prediction: str, reference: str) -> float:
    """Edit similarity, 0 to 1, as CrossCodeEval computes it (scripts/eval_utils.py,
    `cal_edit_sim`: `fuzz.ratio(pred.strip(), gt.strip())` of fuzzywuzzy, divided by 100 here):
    difflib's `SequenceMatcher(None, a, b).ratio()`, 2 * matched characters / total characters,
    of the two stripped texts; 1.0 for equal texts, 0.0 when one is empty. fuzzywuzzy uses difflib
    unless python-Levenshtein is installed (CrossCodeEval's requirements do not install it), and
    it rounds each score to a whole percent, which this does not (a mean moves by under 0.5
    points)."""
    a, b = prediction.strip(), reference.strip()
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b).ratio()


def line_scores(completion: str, reference: str) -> tuple[bool, float]:
    """(exact match, edit similarity) of a completion's first non-empty line against the
    reference's."""
    got, want = first_line(completion), first_line(reference)
    return exact_match(got, want), edit_similarity(got, want)
