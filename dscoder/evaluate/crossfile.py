"""Completing lines that use names from other files of a repository, in the spirit of
CrossCodeEval (Ding et al., 2023): the cases (lines of Python files that use a name defined in
another file of the repository, not on an import line), the prompt as `repo-complete` builds it
(the files the target depends on, then the target up to the line), and greedy completion scored
with CrossCodeEval's code (evaluate/crosscodeeval.py) and by whether every cross-file name of the
real line is produced. Used by `experiment repo-level` and `adapt`."""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from pathlib import Path

LINE_TOKENS = 32
# per completed line: CrossCodeEval's metrics, and whether every cross-file name of the real line
# is produced (this experiment's own measure; CrossCodeEval's identifier exact match is another)
LINE_METRICS = ("exact_match", "edit_similarity", "identifier_f1", "identifier_match")
NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
COMMON_NAMES = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {"self", "cls"}


def defined_names(text: str) -> set[str]:
    """Functions, classes and module-level names a Python file defines (none when it does not
    parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return set()
    names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("__") and n not in COMMON_NAMES}


def cross_file_names(repo: dict, path: str) -> set[str]:
    """Names defined in another file of the repository and not in `path` itself."""
    own = repo["defines"].get(path, set())
    return {n for p, names in repo["defines"].items() if p != path for n in names} - own


def line_cases(folder: Path, repo: dict, paths: list[str]) -> list[dict]:
    """The lines of the Python files `paths` of the repository in `folder` that use a name
    defined in another of its files (`repo["defines"]`: path -> names), not on an import line."""
    found = []
    for path in paths:
        others = cross_file_names(repo, path)
        text = (folder / path).read_text(encoding="utf-8")
        for number, line in enumerate(text.split("\n")):
            stripped = line.strip()
            if not stripped or stripped.startswith(("import ", "from ", "#", "@")) or len(stripped) > 100:
                continue
            used = sorted(set(NAME.findall(line)) & others)
            if used and number > 0:
                found.append({"repo": str(folder), "path": path, "line": number, "text": line, "names": used})
    return found


def line_prompt(engine, case: dict) -> list[int]:
    """The case's prompt as `repo-complete` builds it: the repository context, then the target
    file up to the line (and the line's indentation)."""
    from dscoder.infer import repo_context

    text = (Path(case["repo"]) / case["path"]).read_text(encoding="utf-8")
    before = "".join(line + "\n" for line in text.split("\n")[: case["line"]])
    indent = case["text"][: len(case["text"]) - len(case["text"].lstrip())]
    return repo_context.build(
        engine, Path(case["repo"]), case["path"], None, None, LINE_TOKENS, text=before + indent
    ).ids


def complete_lines(engine, cases: list[dict], prompts: list[list[int]]) -> dict[str, list[float]]:
    """Greedy completion of each case's line from its prompt, scored per case: CrossCodeEval's
    exact match, edit similarity and identifier F1, and identifier match."""
    from dscoder.evaluate import crosscodeeval
    from dscoder.infer.engine import Sequence
    from dscoder.infer.sampling import SamplingParams

    sequences = [Sequence(ids, SamplingParams(max_new_tokens=LINE_TOKENS, stop=("\n",))) for ids in prompts]
    for start in range(0, len(sequences), 8):
        engine.generate(sequences[start : start + 8])
    found: dict[str, list[float]] = {k: [] for k in LINE_METRICS}
    for case, seq in zip(cases, sequences):
        got = seq.text.split("\n")[0]
        row = crosscodeeval.Row(f"{case['path']}:{case['line']}", "python", "", case["text"], "")
        for key, value in crosscodeeval.score(row, got).items():
            if key in found:
                found[key].append(value)
        found["identifier_match"].append(float(all(re.search(rf"\b{re.escape(n)}\b", got) for n in case["names"])))
    return found
