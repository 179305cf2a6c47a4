"""95% intervals by bootstrap over held-out items (and seeds), for the figures of the
experiments and of `adapt`: a mean with its interval, and a paired difference's."""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 2000


def interval(values: np.ndarray, seed: int = 0, weights: np.ndarray | None = None) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (seeds x items) with its 95% bootstrap interval,
    resampling items, and seeds too when there are several. With `weights` (same shape), the
    weighted mean sum(values * weights) / sum(weights), e.g. nats over tokens."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    weights = np.ones_like(values) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if values.size == 0:
        return math.nan, math.nan, math.nan
    seeds, items = values.shape
    mean = float((values * weights).sum() / weights.sum())
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, seeds, size=(RESAMPLES, seeds)) if seeds > 1 else np.zeros((RESAMPLES, 1), dtype=np.int64)
    cols = rng.integers(0, items, size=(RESAMPLES, items))
    picked = (values * weights)[rows[:, :, None], cols[:, None, :]].sum(axis=(1, 2))
    total = weights[rows[:, :, None], cols[:, None, :]].sum(axis=(1, 2))
    low, high = np.percentile(picked / total, [2.5, 97.5])
    return mean, float(low), float(high)


def fmt(figure: tuple[float, float, float], spec: str = "{:.3f}") -> str:
    mean, low, high = figure
    return f"{spec.format(mean)} [{spec.format(low)}, {spec.format(high)}]"
