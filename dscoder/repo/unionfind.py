"""Disjoint sets over the integers 0..n-1, whose root is always the smallest member.

One implementation serves the two places that group things: the connected components of a
repository's dependency graph (Algorithm 1) and the duplicate clusters of near-dedup, where the
smallest member (the earliest sample in input order) is the survivor.
"""

from __future__ import annotations

import numpy as np


class UnionFind:
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

    def union_pairs(self, pairs: np.ndarray) -> None:
        """Join every (a, b) row of an (k, 2) integer array (read in slices, so that a large
        array is never copied whole into Python objects)."""
        for start in range(0, len(pairs), 65536):
            for a, b in pairs[start : start + 65536].tolist():
                self.union(a, b)

    def roots(self) -> np.ndarray:
        """Every member's root. (n,) int64."""
        parent = self.parent.copy()
        while True:  # pointer jumping until every entry names its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand
