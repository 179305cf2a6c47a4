"""CrossCodeEval (Ding et al. 2023, "CrossCodeEval: A Diverse and Multilingual Benchmark for
Cross-File Code Completion"): the repository-level benchmark of the DeepSeek-Coder paper
(section 3.3, Table 7), scored by matching, not by execution.

A row is one line to complete: `prompt` (the file before the cursor), `right_context`,
`groundtruth` (the line), `crossfile_context` (`text`: retrieved snippets of other files of the
repository, already rendered as comment lines; `list`: the snippets) and `metadata` (`task_id`,
`repository`, `file`, ...). The model continues the prompt left to right, with the cross-file
text before it or without ("in-file"); the continuation is cut at the end of its first statement
and scored by code exact match, edit similarity, identifier exact match and identifier F1, as
the benchmark's scripts (amazon-science/cceval, scripts/eval_metric.py and eval_utils.py) do.
docs/evaluation.md, "CrossCodeEval", says what matches those scripts and what differs.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dscoder.benchmark_files import read_records
from dscoder.errors import UserError
from dscoder.evaluate import metrics

FORMAT = "crosscodeeval"
# The DeepSeek-Coder paper's settings for Table 7 (also the defaults of CrossCodeEval's eval.py):
SEQ_LEN = 2048  # prompt and generation together
NEW_TOKENS = 50  # generated tokens, cut to a statement afterwards
CROSSFILE_TOKENS = 512  # of the sequence, the most the cross-file context takes
EXTENSIONS = {".py": "python", ".java": "java", ".ts": "typescript", ".cs": "csharp"}
METRICS = ("exact_match", "edit_similarity", "identifier_exact_match", "identifier_f1")

# Reserved words left out of the identifiers: the lists of the benchmark's scripts/keywords
# (from Microsoft's dpu-utils); Python's is the interpreter's, less True and False.
KEYWORDS = {
    "python": frozenset(keyword.kwlist) - {"True", "False"},
    "java": frozenset(
        "abstract assert boolean break byte case catch char class continue default do double else enum extends final "
        "finally float for if implements import instanceof int interface long native new package private protected "
        "public return short static strictfp super switch synchronized this throw throws transient try void volatile "
        "while var const goto".split()
    ),
    "typescript": frozenset(
        "break case catch class const continue debugger default delete do else export extends finally for function if "
        "import in instanceof new return super switch this throw try typeof var void while with yield enum implements "
        "interface let package private protected public static".split()
    ),
    "csharp": frozenset(
        "abstract as base bool break byte case catch char checked class const continue decimal default delegate do "
        "double else enum event explicit extern finally fixed float for foreach goto if implicit in int interface "
        "internal is lock long namespace new null object operator out override params private protected public "
        "readonly ref return sbyte sealed short sizeof stackalloc static string struct switch this throw try typeof "
        "uint ulong unchecked unsafe ushort using virtual void volatile while".split()
    ),
}
_STRING = re.compile(r'"([^"\\]*(\\.[^"\\]*)*)"|\'([^\'\\]*(\\.[^\'\\]*)*)\'')
_WORD = re.compile(r"\w+")
_IDENTIFIER_START = re.compile(r"[_a-zA-Z]")


@dataclass(frozen=True)
class Row:
    task_id: str
    language: str  # python, java, typescript or csharp (from the file's extension)
    prompt: str
    groundtruth: str
    crossfile: str  # crossfile_context.text ("" when the row has none)


# --- reading ---------------------------------------------------------------------------------------


def read_rows(path: str | Path, records: list[dict[str, Any]] | None = None) -> list[Row]:
    """The rows of a CrossCodeEval file (its `records` when already read); a row lacking a field
    is an error naming the row and the field, raised before anything is generated."""
    records = records if records is not None else read_records(path)
    rows, seen = [], set()
    for number, r in enumerate(records, 1):
        meta = r.get("metadata")
        task_id = meta.get("task_id") if isinstance(meta, dict) else None
        where = f"{path}: row {number}" + (f" ({task_id})" if task_id else "")
        for field in ("prompt", "groundtruth"):
            if not isinstance(r.get(field), str):
                raise UserError(
                    f"{where}: no '{field}' text (CrossCodeEval rows have prompt, groundtruth, "
                    "crossfile_context and metadata)"
                )
        if not isinstance(task_id, str) or not task_id:
            raise UserError(f"{where}: no 'metadata.task_id'")
        if task_id in seen:
            raise UserError(f"{where}: task_id {task_id} appears twice")
        seen.add(task_id)
        language = EXTENSIONS.get(Path(str(meta.get("file", ""))).suffix)
        if language is None:
            raise UserError(
                f"{where}: 'metadata.file' {meta.get('file')!r} is not a "
                f"{', '.join(EXTENSIONS)} file (CrossCodeEval's languages)"
            )
        context = r.get("crossfile_context") or {}
        if not isinstance(context, dict) or not isinstance(context.get("text", ""), str):
            raise UserError(f"{where}: 'crossfile_context' must be an object with a 'text' string")
        rows.append(Row(task_id, language, r["prompt"], r["groundtruth"], context.get("text", "")))
    return rows


# --- post-processing -------------------------------------------------------------------------------


def statement(prompt: str, completion: str, language: str) -> str:
    """The completion cut at the end of its first statement (eval_utils.py,
    `postprocess_code_lines`). Java, TypeScript, C#: up to the first `;`, `{` or `}`. Python: up
    to the first line end at which the file (prompt + completion so far) parses; the whole
    completion when there is none."""
    if language == "python":
        for i, char in enumerate(completion):
            if char == "\n" and i > 0 and _parses(prompt + completion[:i]):
                return completion[:i].rstrip()
        return completion
    end = next((i for i, char in enumerate(completion) if char in ";{}"), None)
    # a completion opening with one of them is kept whole: the scripts test the index for truth
    return completion[: end + 1] if end else completion


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def remove_comments(code: str) -> str:
    """Everything from `#` or `//` to the end of its line dropped, in every language and inside
    strings too, as the scripts do before scoring (Python's `//` operator included)."""
    return re.sub(r"//.*", "", re.sub(r"#.*", "", code))


# --- metrics ---------------------------------------------------------------------------------------


def identifiers(code: str, language: str) -> list[str]:
    """The identifiers of `code` in order, repeats kept (eval_utils.py, `extract_identifiers`):
    string literals removed, then the word-character runs that start with a letter or `_` and
    are not reserved words."""
    words = _WORD.findall(_STRING.sub("", code))
    return [w for w in words if _IDENTIFIER_START.match(w) and w not in KEYWORDS[language]]


def identifier_f1(predicted: list[str], expected: list[str]) -> float:
    """F1 of the distinct predicted identifiers against the distinct expected ones
    (eval_metric.py, `compute_id_match`); 0.0 when both are empty, as there."""
    got, want = set(predicted), set(expected)
    hits = len(got & want)
    wrong = len(got) + len(want) - 2 * hits
    return 2 * hits / (2 * hits + wrong) if got or want else 0.0


def score(row: Row, generation: str) -> dict:
    """A generation's statement and its four scores against the row's line."""
    completion = statement(row.prompt, generation, row.language)
    got, want = remove_comments(completion), remove_comments(row.groundtruth)
    got_ids, want_ids = identifiers(got, row.language), identifiers(want, row.language)
    return {
        "completion": completion,
        "exact_match": float(metrics.exact_match(got, want)),
        "edit_similarity": metrics.edit_similarity(got, want),
        "identifier_exact_match": float(got_ids == want_ids),
        "identifier_f1": identifier_f1(got_ids, want_ids),
    }


def summarize(rows: list[Row], scored: list[dict], crossfile: bool) -> dict:
    """The mean of each metric (fractions, 0 to 1), overall and per language."""

    def means(items: list[dict]) -> dict:
        return {"tasks": len(items), **{m: sum(s[m] for s in items) / len(items) for m in METRICS}}

    by_language: dict[str, list[dict]] = {}
    for row, s in zip(rows, scored):
        by_language.setdefault(row.language, []).append(s)
    return {
        "format": FORMAT,
        "crossfile": crossfile,
        "overall": means(scored),
        "languages": {lang: means(items) for lang, items in sorted(by_language.items())},
    }


# --- generation ------------------------------------------------------------------------------------


def generate(
    engine,
    rows: list[Row],
    crossfile: bool,
    new_tokens: int = NEW_TOKENS,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 0.95,
    seed: int = 0,
) -> list[str]:
    """Each row's continuation, left to right (no FIM), from its prompt fitted to `SEQ_LEN`
    tokens (or the model's shorter context): with the cross-file context when `crossfile`."""
    from tqdm import tqdm

    from dscoder.infer import prompts
    from dscoder.infer.engine import Sequence
    from dscoder.infer.sampling import SamplingParams

    engine.context = min(engine.context, SEQ_LEN)
    texts = []
    with tqdm(total=len(rows), desc="crosscodeeval", unit="task") as progress:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            sequences = [
                Sequence(
                    prompts.cross_file(
                        engine, row.prompt, row.crossfile if crossfile else "", new_tokens, CROSSFILE_TOKENS
                    ).ids,
                    SamplingParams(max_new_tokens=new_tokens, temperature=temperature, top_p=top_p, seed=seed),
                )
                for row in chunk
            ]
            engine.generate(sequences)
            texts += [s.text for s in sequences]
            progress.update(len(chunk))
    return texts
