"""The eight languages of DeepSeek-Coder's "HumanEval 8-lang" table, each run the way a user's
samples are: the benchmark file's task, `Task.program`, then `execute` in the sandbox. One real
task (HumanEval/0, has_close_elements, in each language's MultiPL-E translation) gets completions
written by hand: a right one must pass, a wrong one fail, and broken ones get the status they
deserve."""

import json

import pytest

from conftest import SHARED, need_shared
from dscoder.errors import UserError
from dscoder.evaluate import sandbox, toolchains
from dscoder.evaluate.benchmarks import tasks
from dscoder.evaluate.execute import ExecConfig, execute

BENCH = SHARED / "benchmarks"
CFG = ExecConfig(workers=2, timeout=10)
TASK_IDS = ("Python/0", "HumanEval_0_has_close_elements")

# language: (benchmark file, [(completion, expected status)])
CASES = {
    "python": (
        "deepseek-humaneval-python.jsonl",
        [
            (
                "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
                "            if abs(a - b) < threshold:\n                return True\n    return False\n",
                "passed",
            ),
            ("    return False\n", "failed"),
        ],
    ),
    "cpp": (
        "multipl-e-humaneval-cpp.jsonl",
        [
            (
                "    for (size_t i = 0; i < numbers.size(); i++)\n        for (size_t j = i + 1; j < numbers.size(); j++)\n"
                "            if (std::abs(numbers[i] - numbers[j]) < threshold) return true;\n    return false;",
                "passed",
            ),
            ("    return false;", "failed"),
            ("", "failed"),  # an empty body falls off the end: a test that passed when built with -O1
        ],
    ),
    "java": (
        "multipl-e-humaneval-java.jsonl",
        [
            (
                "        for (int i = 0; i < numbers.size(); i++)\n            for (int j = i + 1; j < numbers.size(); j++)\n"
                "                if (Math.abs(numbers.get(i) - numbers.get(j)) < threshold) return true;\n"
                "        return false;",
                "passed",
            ),
            ("        return false;", "failed"),
        ],
    ),
    "php": (
        "multipl-e-humaneval-php.jsonl",
        [
            (
                "    for ($i = 0; $i < count($numbers); $i++) {\n        for ($j = $i + 1; $j < count($numbers); $j++) {\n"
                "            if (abs($numbers[$i] - $numbers[$j]) < $threshold) {\n                return true;\n"
                "            }\n        }\n    }\n    return false;\n}",
                "passed",
            ),
            ("    return false;\n}", "failed"),  # the tests throw Exception("Test failed!")
            ("    return abs($numbers[0] - );\n}", "compile_error"),
            ("    return intdiv(1, 0) > $threshold;\n}", "runtime_error"),
        ],
    ),
    "typescript": (
        "multipl-e-humaneval-ts.jsonl",
        [
            (
                "  for (let i = 0; i < numbers.length; i++)\n    for (let j = i + 1; j < numbers.length; j++)\n"
                "      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}",
                "passed",
            ),
            ("  return false;\n}", "failed"),
        ],
    ),
    "csharp": (
        "multipl-e-humaneval-cs.jsonl",
        [
            (
                "        for (int i = 0; i < numbers.Count; i++)\n            for (int j = i + 1; j < numbers.Count; j++)\n"
                "                if (Math.Abs(numbers[i] - numbers[j]) < threshold) return true;\n        return false;",
                "passed",
            ),
            ("        return false;", "failed"),  # Debug.Assert: mono writes "Fail:" and exits 0
            ("        return numbers.Count(;", "compile_error"),
            ("        return numbers[numbers.Count] > threshold;", "runtime_error"),  # the released harness passes it
        ],
    ),
    "shell": (
        "multipl-e-humaneval-sh.jsonl",
        [
            (
                "    echo \"$1\" | tr ' ' '\\n' | awk -v t=\"$2\" '{ a[NR] = $1 } END {\n"
                "        for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++) {\n"
                '            d = a[i] - a[j]; if (d < 0) d = -d; if (d < t) { print "true"; exit } }\n'
                '        print "false" }\'',
                "passed",
            ),
            ("    echo false", "failed"),
        ],
    ),
    "javascript": (
        "multipl-e-humaneval-js.jsonl",
        [
            (
                "  for (let i = 0; i < numbers.length; i++)\n    for (let j = i + 1; j < numbers.length; j++)\n"
                "      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}",
                "passed",
            ),
            ("  return false;\n}", "failed"),
        ],
    ),
}


def need_runnable(language: str, requested: str = "auto") -> str:
    """The sandbox mode the language runs in here; a skip saying why when it cannot."""
    problem = toolchains.missing(language)
    if problem:
        pytest.skip(problem)
    try:
        mode = sandbox.choose(requested, toolchains.readable_roots())
    except UserError as exc:
        pytest.skip(str(exc))
    problem = toolchains.probe(language, mode)
    if problem:
        pytest.skip(f"--sandbox {mode}: {problem}")
    return mode


def statuses(language: str, cases: list[tuple[str, str]], out, cfg: ExecConfig = CFG) -> list[dict]:
    file = CASES[language][0]
    _, task_list = tasks(need_shared(BENCH / file))
    task = next(t for t in task_list if t.task_id in TASK_IDS)
    assert toolchains.canonical(task.language) == language
    execute([task], [{"task_id": task.task_id, "completion": c} for c, _ in cases], out, cfg)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["completion_id"])


@pytest.mark.parametrize("language", list(CASES))
def test_hand_written_completions_get_their_status(language, tmp_path):
    need_runnable(language)
    cases = CASES[language][1]
    rows = statuses(language, cases, tmp_path)
    assert [r["status"] for r in rows] == [expected for _, expected in cases], rows


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
@pytest.mark.parametrize("language", ["php", "csharp"])
def test_php_and_csharp_run_in_each_isolating_mode(language, mode, tmp_path):
    need_runnable(language, mode)
    cases = CASES[language][1][:2]
    rows = statuses(language, cases, tmp_path, ExecConfig(workers=2, timeout=10, sandbox=mode))
    assert [r["status"] for r in rows] == ["passed", "failed"], rows


def test_php_and_csharp_outcomes_are_read_strictly():
    """Outputs as php 8.2 and mono 6.8 write them: a C# run that exits 0 after a failed
    Debug.Assert has failed; one that exits non-zero without one crashed."""

    def status(language, step, returncode, stderr):
        return toolchains.status(language, step, sandbox.Run(returncode, "", stderr, 0.1, False))

    failed_assert = (
        "Fail: \n  at System.Diagnostics.DefaultTraceListener.Fail (System.String message) [0x00000]\n"
        "  at System.Diagnostics.Debug.Assert (System.Boolean condition) [0x00000]\n"
    )
    assert status("csharp", "run", 0, failed_assert) == "failed"
    assert status("csharp", "run", 0, "") == "passed"
    assert (
        status(
            "csharp",
            "run",
            1,
            "Unhandled Exception:\nSystem.IndexOutOfRangeException: Index was outside the bounds of the array.\n",
        )
        == "runtime_error"
    )
    assert status("cs", "build", 1, "") == "compile_error"
    assert status("php", "run", 255, "PHP Fatal error:  Uncaught Exception: Test failed! in main.php:12\n") == "failed"
    assert (
        status("php", "run", 255, 'PHP Parse error:  syntax error, unexpected token ")" in main.php on line 9\n')
        == "compile_error"
    )
    assert (
        status("php", "run", 255, "PHP Fatal error:  Uncaught DivisionByZeroError: Division by zero\n")
        == "runtime_error"
    )


def test_a_php_program_without_its_opening_tag_is_run_as_php(tmp_path):
    toolchains.write_program("php", "echo 1;\n", tmp_path)
    assert (tmp_path / "main.php").read_text() == "<?php\necho 1;\n"
    toolchains.write_program("php", "<?php\necho 1;\n", tmp_path)
    assert (tmp_path / "main.php").read_text() == "<?php\necho 1;\n"
