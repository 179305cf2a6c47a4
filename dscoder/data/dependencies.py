"""Dependency ordering: the paper's Algorithm 1 (section 2.3).

Edges run B -> A when file A depends on file B. The graph is split into connected components;
in each, the not-yet-taken file with the *smallest* current in-degree is taken next (ties broken
at random with a seeded generator) and the in-degrees of the files depending on it drop by one.
Taking the minimum rather than waiting for zero is what lets cycles through. Each component
becomes one training sample: its files in that order, each headed by its `#{path}` line.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict


def components(nodes: list[str], deps: dict[str, set[str]]) -> list[list[str]]:
    """Connected components of the undirected dependency graph, each sorted, ordered by their
    first path."""
    parent = {n: n for n in nodes}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in nodes:
        for dep in deps.get(node, ()):
            if dep in parent:
                a, b = find(node), find(dep)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = defaultdict(list)
    for node in sorted(nodes):
        groups[find(node)].append(node)
    return sorted(groups.values(), key=lambda g: g[0])


def order_component(nodes: list[str], deps: dict[str, set[str]], rng: random.Random) -> list[str]:
    """Algorithm 1 on one component: repeatedly take the file with the smallest in-degree."""
    members = set(nodes)
    in_degree = {n: len(deps.get(n, set()) & members) for n in nodes}
    dependents: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        for dep in deps.get(node, set()) & members:
            dependents[dep].append(node)
    # A random priority per file breaks ties between equal in-degrees, seeded, once per file.
    priority = {n: rng.random() for n in sorted(nodes)}
    heap = [(in_degree[n], priority[n], n) for n in nodes]
    heapq.heapify(heap)
    taken: set[str] = set()
    order: list[str] = []
    while heap:
        degree, _, node = heapq.heappop(heap)
        if node in taken or degree != in_degree[node]:
            continue  # a stale entry: the file was taken or its in-degree dropped since
        taken.add(node)
        order.append(node)
        for dependent in dependents[node]:
            if dependent not in taken:
                in_degree[dependent] -= 1
                heapq.heappush(heap, (in_degree[dependent], priority[dependent], dependent))
    return order


def order_repository(nodes: list[str], deps: dict[str, set[str]], seed: int | str) -> list[list[str]]:
    """Every component of a repository's files, each in Algorithm 1 order. Ties are broken by a
    generator seeded with `seed` and the component's paths: reproducible on any worker, and the
    same for a fork that keeps the files, so forks stay recognisable to deduplication."""
    return [order_component(group, deps, random.Random(f"{seed}:{'|'.join(group)}"))
            for group in components(nodes, deps)]
