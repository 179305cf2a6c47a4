"""Repository-level completion prompts (paper section 2.3, README "repository level code
completion"): the files the target file depends on, in the order the data build gives them in
its training sample (`repo.dependencies.analyze`, with the same repository name and the default
seed), each headed by `#{path}`, then the target file up to the cursor (as FIM when there is
text after the cursor).

When the context does not fit the token budget, the least related files go first: those
farthest from the target in the dependency graph, the largest first among equals.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from pathlib import Path

from dscoder import formats
from dscoder.errors import UserError
from dscoder.infer import prompts
from dscoder.repo.collect import CollectConfig, SourceFile, read_folder, repository_name
from dscoder.repo.dependencies import OrderConfig, analyze
from dscoder.repo.imports import CodeFile

log = logging.getLogger("dscoder")


def context_files(sources: list[SourceFile], repo_name: str, target: str) -> tuple[list[str], dict[str, int]]:
    """The files `target` depends on, directly or not, in the order of the training sample that
    holds them, and their distance from it in the dependency graph."""
    analysis = analyze([CodeFile(f.path, f.text, f.language, None) for f in sources], repo_name, OrderConfig().seed)
    deps = analysis.graph.deps
    distance, queue = {target: 0}, deque([target])
    while queue:
        current = queue.popleft()
        for dep in sorted(deps.get(current, ())):
            if dep not in distance:
                distance[dep] = distance[current] + 1
                queue.append(dep)
    distance.pop(target)
    ordered = [path for group in analysis.groups for path in group if path in distance]
    return ordered, distance


def build(
    engine, repo: Path, target: str, line: int | None, column: int | None, max_new_tokens: int, text: str | None = None
) -> prompts.Prompt:
    """The prompt for completing `target` (a path inside `repo`) at the cursor; `text` is the
    target's text as an editor holds it (unsaved), else the file as it is on disk."""
    repo = Path(repo)
    if not repo.is_dir():
        raise UserError(f"repository folder not found: {repo}")
    candidate = Path(target) if Path(target).is_absolute() else repo / target
    if not candidate.exists() and Path(target).exists():
        candidate = Path(target)  # a path relative to the working directory
    if not candidate.resolve().is_relative_to(repo.resolve()):
        raise UserError(f"{target} is not inside {repo}")
    rel = candidate.resolve().relative_to(repo.resolve()).as_posix()
    read = read_folder(repo, CollectConfig(), Counter())
    sources = {f.path: f for f in read}
    if rel not in sources:
        if not (repo / rel).is_file():
            raise UserError(f"{rel}: not a file of {repo}")
        raise UserError(f"{rel}: not a text file of a known language")
    if text is None:
        text = sources[rel].text
    else:
        sources[rel] = SourceFile(rel, text, sources[rel].language)
        read = [sources[rel] if f.path == rel else f for f in read]
    lines = text.split("\n")
    prefix, suffix = prompts.split_at_cursor(text, line or len(lines), column)
    files = {p: f.text for p, f in sources.items()}
    ordered, distance = context_files(read, repository_name(repo), rel)
    fim = bool(suffix.strip())

    def render(context: list[str]) -> str:
        pairs = [(p, files[p]) for p in context]
        if fim:
            return formats.fim_prompt(formats.repo_sample(pairs) + formats.file_header(rel) + prefix, suffix)
        return formats.repo_prompt(pairs, rel, prefix)

    room = engine.context - max_new_tokens
    cost = {
        p: len(engine.tokenizer(formats.file_header(p) + files[p], add_special_tokens=False)["input_ids"])
        for p in ordered
    }
    base = len(engine.encode(render([])))
    keep = list(ordered)
    for path in sorted(ordered, key=lambda p: (-distance[p], -cost[p], p)):
        if base + sum(cost[p] for p in keep) <= room:
            break
        keep.remove(path)
    dropped = len(ordered) - len(keep)
    if dropped:
        log.info("repository context: kept %d of %d related files to fit %d tokens", len(keep), len(ordered), room)
    if fim:
        return prompts.insertion(engine, prefix, suffix, max_new_tokens, [(p, files[p]) for p in keep], path=rel)
    return prompts.completion(engine, formats.repo_prompt([(p, files[p]) for p in keep], rel, prefix), max_new_tokens)
