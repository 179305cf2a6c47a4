"""Benchmark files: reading them and telling their format from their fields.

Formats (as published): OpenAI HumanEval, HumanEval-X (CodeGeeX, task ids like `CPP/0`),
HumanEval single-line infilling, MultiPL-E, MBPP, HumanEval+ and MBPP+ (EvalPlus), DeepSeek-Coder's
LeetCode Contest, DS-1000, APPS and CrossCodeEval. A leaf module: the data build's decontamination
reads which strings of a task a training file must not contain, and the
evaluator (evaluate/benchmarks.py) turns records into tasks.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

from dscoder.errors import UserError

# format -> fields a record must have
REQUIRED_FIELDS = {
    "crosscodeeval": ("prompt", "crossfile_context", "metadata"),  # its reader checks the rest, row by row
    "mbpp-plus": (
        "task_id",
        "prompt",
        "entry_point",
        "canonical_solution",
        "base_input",
        "plus_input",
        "atol",
        "assertion",
    ),
    "humaneval-plus": ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol"),
    "leetcode": ("task_id", "prompt_sft"),
    "ds-1000": ("prompt", "code_context"),
    "apps": ("question", "input_output"),
    "humaneval-x": ("task_id", "prompt", "declaration", "canonical_solution", "test"),
    "humaneval-infilling": ("task_id", "prompt", "suffix", "canonical_solution"),
    "humaneval": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    "multipl-e": ("name", "language", "prompt", "tests"),
    "mbpp": ("task_id", "text", "code", "test_list"),
}
# format -> what every row must have beyond the fields that tell the format
ROW_FIELDS = {"leetcode": ("prompt", "test", "meta")}
# format -> the fields that hold the task's prompt and solution (what must not leak into training)
CONTAMINATING_FIELDS = {
    "crosscodeeval": ("prompt", "groundtruth"),
    "humaneval": ("prompt", "canonical_solution"),
    "humaneval-plus": ("prompt", "canonical_solution"),
    "mbpp-plus": ("prompt", "canonical_solution"),
    "humaneval-x": ("prompt", "canonical_solution"),
    "humaneval-infilling": ("prompt", "canonical_solution", "suffix"),
    "multipl-e": ("prompt",),
    "mbpp": ("text", "code"),
    "ds-1000": ("prompt", "reference_code"),
    "apps": ("question",),
    "leetcode": ("prompt", "prompt_sft"),
}


def read_records(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a `.jsonl`, `.jsonl.gz` or `.json` (list) file; with `limit`, only the first
    that many of a JSON-lines file are read (enough to tell its format)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"benchmark file not found: {path}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            if path.name.endswith((".json", ".json.gz")):
                records = json.load(f)
            else:
                records = [json.loads(line) for line in itertools.islice((ln for ln in f if ln.strip()), limit)]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError) as exc:
        raise UserError(f"{path}: not a readable JSON-lines benchmark file ({exc})") from None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path}: expected a non-empty list of JSON objects")
    return records


def detect_format(records: list[dict[str, Any]], path: str | Path = "") -> str:
    """The benchmark format of `records`, from the fields of the first record. A record with
    EvalPlus's `plus_input` is HumanEval+ or MBPP+, never plain HumanEval or MBPP (whose tests
    alone would score it higher than the benchmark does)."""
    first = records[0]
    for name, fields in REQUIRED_FIELDS.items():
        if all(f in first for f in fields) and (name.endswith("-plus") or "plus_input" not in first):
            if name == "humaneval-plus" and str(first["task_id"]).startswith("Mbpp/"):
                return "mbpp-plus"  # MBPP+ releases without `assertion`
            return name  # checked most specific first
    known = "; ".join(f"{n}: {', '.join(f)}" for n, f in REQUIRED_FIELDS.items())
    raise UserError(f"{path}: unknown benchmark format (fields {sorted(first)}; expected one of {known})")


def check_rows(records: list[dict[str, Any]], fmt: str, path: str | Path = "") -> None:
    """A UserError naming the first row that lacks a field its format needs."""
    fields = REQUIRED_FIELDS[fmt] + ROW_FIELDS.get(fmt, ())
    for number, record in enumerate(records, 1):
        absent = [f for f in fields if f not in record]
        if absent:
            name = record.get("task_id", record.get("name", ""))
            raise UserError(
                f"{path}: row {number}{f' ({name})' if name else ''} has no {absent[0]!r} "
                f"(a {fmt} row needs {', '.join(fields)})"
            )
    if fmt == "leetcode":
        for number, record in enumerate(records, 1):
            if not isinstance(record["meta"], dict) or record["meta"].get("difficulty") not in DIFFICULTIES:
                raise UserError(
                    f"{path}: row {number} ({record['task_id']}) has no meta.difficulty ({'/'.join(DIFFICULTIES)})"
                )


DIFFICULTIES = ("Easy", "Medium", "Hard")  # LeetCode Contest's `meta.difficulty`


def task_id(record: dict[str, Any], fmt: str) -> str:
    if fmt == "multipl-e":
        return str(record["name"])
    if fmt == "ds-1000":
        return str(record.get("metadata", {}).get("problem_id", ""))
    if fmt == "crosscodeeval":
        return str(record.get("metadata", {}).get("task_id", ""))
    if fmt == "apps":
        return str(record.get("problem_id", ""))
    return str(record["task_id"])


def contaminating_strings(path: str | Path, records: list[dict] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(format, [(task id, text)]) for the prompts and solutions of a benchmark file (its
    `records` when already read)."""
    records = records if records is not None else read_records(path)
    fmt = detect_format(records, path)
    strings = []
    for record in records:
        for field in CONTAMINATING_FIELDS[fmt]:
            value = record.get(field)
            if isinstance(value, str) and value.strip():
                strings.append((f"{task_id(record, fmt)}:{field}", value))
    return fmt, strings
