"""Dependency ordering: the paper's Algorithm 1 (section 2.3), and `analyze`, the one view of a
repository that `dscoder data build` and repository-level completion (`repo-complete`, the
server) share, so a model sees a repository at inference as it saw it in training.

Edges run B -> A when file A depends on file B. The graph is split into connected components;
in each, the not-yet-taken file with the *smallest* current in-degree is taken next (ties broken
at random with a seeded generator) and the in-degrees of the files depending on it drop by one.
Taking the minimum rather than waiting for zero is what lets cycles through. Each component
becomes one training sample: its files in that order, each headed by its `#{path}` line.

One departure from the paper: an in-degree has two parts, the dependencies a file names in an
import statement and those it only references (a Java type of its own package, a C# type of its
own namespace, a Go identifier of its own package; see imports.py), and the smallest is taken
by imports first, references second. While a file with in-degree zero remains this is the
paper's choice exactly; it differs only where a cycle must be broken, and then it breaks the
cycle at a reference rather than at an import. Same-package references knot whole packages into
cycles: in the JDK's `java.util.concurrent`, `ReentrantLock` uses `AbstractQueuedSynchronizer`,
which imports `ForkJoinPool`, which extends `AbstractExecutorService`, which uses
`ExecutorCompletionService`, which uses `LinkedBlockingQueue`, which imports `ReentrantLock`.
Counting every edge alike, the paper's rule broke that cycle at random and put
`locks/ReentrantLock.java` after five queues importing it (5 of 39 import edges in the wrong
order); counting imports first, none is.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated

from dscoder.config import AT_LEAST_ONE, Seed
from dscoder.repo.imports import BUILD_FILE_LANGUAGES, DEPENDENCY_LANGUAGES, CodeFile, Graph, dependencies
from dscoder.repo.parsing import parse
from dscoder.repo.unionfind import UnionFind


@dataclass(frozen=True)
class OrderConfig:
    """Dependency ordering settings."""

    enabled: bool = True
    """Build repository-level samples in dependency order (else every file is its own sample)."""
    seed: Seed = 0
    """Seed of the tie-breaking in Algorithm 1 (combined with each component's paths)."""
    max_sample_chars: Annotated[int, AT_LEAST_ONE] = 4_000_000
    """A component larger than this is cut, in order, into consecutive samples of at most this
    size (one huge sample would stall tokenization and dominate a training mix)."""


@dataclass
class Analysis:
    """A repository as its training samples see it."""

    graph: Graph
    """The dependencies of its files in dependency languages."""
    groups: list[list[str]]
    """Every file in its sample: each connected component in Algorithm 1 order, every other file
    alone; the groups sorted by their first path."""


def analyze(files: list[CodeFile], repo_name: str, seed: int | str) -> Analysis:
    """The dependency graph and sample groups of a repository's files. `repo_name` is the
    repository's folder or archive name (the import name of a root that is itself a package);
    `seed` seeds Algorithm 1's ties. Files not yet parsed are parsed here."""
    code = [
        f if f.parsed is not None else CodeFile(f.path, f.text, f.language, parse(f.text, f.language, f.path))
        for f in files
        if f.language in DEPENDENCY_LANGUAGES
    ]
    graph = dependencies(code, [f for f in files if f.language in BUILD_FILE_LANGUAGES], repo_name)
    groups = order_repository([f.path for f in code], graph.deps, seed, graph.references)
    ordered = {path for group in groups for path in group}
    groups += [[f.path] for f in files if f.path not in ordered]
    return Analysis(graph, sorted(groups, key=min))


def components(nodes: list[str], deps: dict[str, set[str]]) -> list[list[str]]:
    """Connected components of the undirected dependency graph, each sorted, ordered by their
    first path."""
    names = sorted(set(nodes))
    index = {name: i for i, name in enumerate(names)}
    sets = UnionFind(len(names))
    for name in names:
        for dep in deps.get(name, ()):
            if dep in index:
                sets.union(index[name], index[dep])
    groups: dict[int, list[str]] = defaultdict(list)
    for i, name in enumerate(names):  # a root is its set's smallest member: groups come in order
        groups[sets.find(i)].append(name)
    return list(groups.values())


def order_component(
    nodes: list[str], deps: dict[str, set[str]], rng: random.Random, references: dict[str, set[str]] | None = None
) -> list[str]:
    """Algorithm 1 on one component: repeatedly take the file with the smallest in-degree,
    counting the dependencies it imports before those it only references (`references`, a part
    of `deps`)."""
    references = references or {}
    members = set(nodes)
    # (imports not yet taken, references not yet taken) per file
    in_degree: dict[str, list[int]] = {}
    dependents: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for node in nodes:
        needs = deps.get(node, set()) & members
        referenced = references.get(node, set()) & needs
        in_degree[node] = [len(needs) - len(referenced), len(referenced)]
        for dep in needs:
            dependents[dep].append((node, 1 if dep in referenced else 0))
    # A random priority per file breaks ties between equal in-degrees, seeded, once per file.
    priority = {n: rng.random() for n in sorted(nodes)}
    heap = [(*in_degree[n], priority[n], n) for n in nodes]
    heapq.heapify(heap)
    taken: set[str] = set()
    order: list[str] = []
    while heap:
        imports, refs, _, node = heapq.heappop(heap)
        if node in taken or [imports, refs] != in_degree[node]:
            continue  # a stale entry: the file was taken or its in-degree dropped since
        taken.add(node)
        order.append(node)
        for dependent, kind in dependents[node]:
            if dependent not in taken:
                in_degree[dependent][kind] -= 1
                heapq.heappush(heap, (*in_degree[dependent], priority[dependent], dependent))
    return order


def order_repository(
    nodes: list[str], deps: dict[str, set[str]], seed: int | str, references: dict[str, set[str]] | None = None
) -> list[list[str]]:
    """Every component of a repository's files, each in Algorithm 1 order. Ties are broken by a
    generator seeded with `seed` and the component's paths: reproducible on any worker, and the
    same for a fork that keeps the files, so forks stay recognisable to deduplication."""
    return [
        order_component(group, deps, random.Random(f"{seed}:{'|'.join(group)}"), references)
        for group in components(nodes, deps)
    ]
