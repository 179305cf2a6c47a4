"""Benchmark tasks: what a model is asked and how its answer is run, for every format that
benchmark_files.py reads (HumanEval, HumanEval-X, HumanEval infilling, MultiPL-E, MBPP, DS-1000,
APPS).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dscoder.benchmark_files import detect_format, read_records
from dscoder.errors import UserError

HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_TEST_IDS = range(11, 511)  # DeepSeek-Coder's MBPP test split
MBPP_SHOT_IDS = (2, 3, 4)
HUMANEVAL_X_LANGUAGES = {"python": "python", "cpp": "cpp", "java": "java", "javascript": "javascript",
                         "js": "javascript", "go": "go", "rust": "rust"}
MULTIPL_E_LANGUAGES = {"cpp": "cpp", "java": "java", "js": "javascript", "ts": "typescript", "go": "go",
                       "go_test.go": "go", "rs": "rust", "sh": "shell", "py": "python"}
APPS_STOPS = ("\nQUESTION:", "\n---", "\n```\n")


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

    def program(self, completion: str) -> str:
        """The program that tests `completion`, assembled as the benchmark intends."""
        return assemble(self, completion)

    def completion_from(self, generated: str) -> str:
        """A generation (continuing `prompt`) as a completion of the benchmark's own prompt, the
        convention of sample files (HumanEval's model prompt is stripped; its programs are not)."""
        if self.base is None:
            return generated
        full = self.prompt + generated
        return full[len(self.base):] if full.startswith(self.base) else generated


def _strip_stops(completion: str, stops: tuple[str, ...]) -> str:
    cut = [i for s in stops if (i := completion.find(s)) >= 0]
    return completion[:min(cut)] if cut else completion


def assemble(task: Task, completion: str) -> str:
    r, fmt = task.record, task.format
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
        return APPS_HARNESS.replace("{SOLUTION}", repr(completion)).replace("{IO}", repr(r["input_output"])) \
            .replace("{STARTER}", repr(r.get("starter_code") or ""))
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


def tasks(path: str | Path, records: list[dict] | None = None) -> tuple[str, list[Task]]:
    """The tasks of a benchmark file (format detected from its fields)."""
    records = records if records is not None else read_records(path)
    fmt = detect_format(records, path)
    out: list[Task] = []
    if fmt == "humaneval":
        for r in records:
            out.append(Task(r["task_id"], "python", r["prompt"].strip(), HUMANEVAL_STOPS,
                            reference=r["canonical_solution"], record=r, format=fmt, base=r["prompt"]))
    elif fmt == "humaneval-infilling":
        for r in records:
            out.append(Task(r["task_id"], "python", r["prompt"], ("\n",), suffix=r["suffix"],
                            reference=r["canonical_solution"], record=r, format=fmt))
    elif fmt == "humaneval-x":
        for r in records:
            language = _humaneval_x_language(r["task_id"])
            prompt = r["prompt"] + r["declaration"] if language == "rust" else r["prompt"]
            stops = HUMANEVAL_STOPS if language == "python" else ("\n}\n\n", "\n\n\n")
            out.append(Task(r["task_id"], language, prompt, stops, reference=r["canonical_solution"], record=r, format=fmt))
    elif fmt == "multipl-e":
        for r in records:
            language = MULTIPL_E_LANGUAGES.get(r["language"], r["language"])
            out.append(Task(r["name"], language, r["prompt"], tuple(r.get("stop_tokens") or ()), record=r, format=fmt))
    elif fmt == "mbpp":
        by_id = {int(r["task_id"]): r for r in records}
        shots = [by_id[i] for i in MBPP_SHOT_IDS if i in by_id]
        for r in records:
            if int(r["task_id"]) in MBPP_TEST_IDS:
                out.append(Task(str(r["task_id"]), "python", _mbpp_prompt(r, shots), ("[DONE]", "\n[DONE]"),
                                reference=r["code"], record=r, format=fmt, shots=shots))
    elif fmt == "ds-1000":
        for r in records:
            problem = str(r.get("metadata", {}).get("problem_id", len(out)))
            if "[insert]" in r["prompt"]:
                prefix, suffix = r["prompt"].split("[insert]", 1)
                out.append(Task(problem, "python", prefix, ("</code>", "# SOLUTION END"), suffix=suffix,
                                reference=r.get("reference_code"), record=r, format=fmt))
            else:
                out.append(Task(problem, "python", r["prompt"], ("</code>", "# SOLUTION END", "\n```"),
                                reference=r.get("reference_code"), record=r, format=fmt))
    elif fmt == "crosscodeeval":
        raise UserError(f"{path}: a CrossCodeEval file is scored by matching, not by running programs: "
                        "use `dscoder eval run` (docs/evaluation.md, \"CrossCodeEval\")")
    elif fmt == "apps":
        for r in records:
            io = json.loads(r["input_output"]) if r.get("input_output") else {}
            how = "Call-Based format" if io.get("fn_name") else "Standard Input format"
            prompt = f"\nQUESTION:\n{r['question']}\n{r.get('starter_code') or ''}\nUse {how}\nANSWER:\n"
            out.append(Task(str(r.get("problem_id", len(out))), "python", prompt, APPS_STOPS, record=r, format=fmt))
    return fmt, out


def clean_completion(task: Task, completion: str) -> str:
    """A raw generation cut at the task's stop sequences (samples from other tools may not be)."""
    return _strip_stops(completion, task.stop)


def code_block(task: Task, answer: str) -> str | None:
    """The first fenced block of an instruct answer tagged with the task's language, or None."""
    found = re.findall(f"```{re.escape(task.language.lower())}\n(.*?)```", answer, re.DOTALL | re.IGNORECASE)
    return found[0] if found else None


def instruct_completion(task: Task, answer: str) -> str:
    """An instruct model's answer as a completion of the task, as DeepSeek-Coder's released
    evaluation scripts take it: MBPP, the first ```python block (else the whole answer);
    HumanEval, the first block tagged with the language, from the function's name on (cut before
    the last line closing a brace at the function's indentation, as those scripts do), with the
    prompt's lines before the signature put back in front, else the prompt plus the answer. The
    completion follows HumanEval's prompt, so the program defines the function again in full."""
    block = code_block(task, answer)
    if block is None:
        return answer if task.format == "mbpp" else "\n" + answer
    if task.format == "mbpp":
        return block
    lines = [line for line in task.record["prompt"].strip().split("\n") if line.strip()]
    signature = [i for i, line in enumerate(lines) if line.startswith("def ")]
    name, before = (lines[signature[-1]].split("(")[0].strip(), "\n".join(lines[:signature[-1]])) if signature \
        else (lines[-1].split("{")[0].strip(), "\n".join(lines[:-1]))
    start, indent = block.lower().find(name.lower()), 0
    if start < 0:
        start = 0
    else:
        while start - indent - 1 >= 0 and block[start - indent - 1] == " ":
            indent += 1
    end = block.rfind("\n" + " " * indent + "}")
    return "\n" + before + "\n" + block[start:end if end >= 0 else len(block)] + "\n"


# APPS: standard-input problems run the solution once per test with that input and compare the
# printed lines; call-based problems call `fn_name` (a Solution method when the starter code has
# one) and compare the result. Based on the published APPS testing procedure.
APPS_HARNESS = r'''
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
'''
