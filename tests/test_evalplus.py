"""HumanEval+ and MBPP+ (evaluate/plus.py): read as their own formats, scored on base and plus
inputs as the evalplus package scores them."""

import json

import pytest

from dscoder.benchmark_files import detect_format
from dscoder.errors import UserError
from dscoder.evaluate import sandbox, toolchains
from dscoder.evaluate.benchmarks import tasks
from dscoder.evaluate.execute import ExecConfig, execute

CFG = ExecConfig(workers=2, timeout=10)

# A few tasks of our own in evalplus's HumanEvalPlus schema.
HUMANEVAL_PLUS = [
    {
        "task_id": "HumanEval/900",
        "entry_point": "is_prime",
        "prompt": 'def is_prime(n: int) -> bool:\n    """Whether n is a prime number.\n    >>> is_prime(13)\n    True\n    """\n',
        "canonical_solution": "    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n"
        "            return False\n        i += 1\n    return True\n",
        "test": "def check(candidate):\n    assert candidate(13)\n    assert not candidate(10)\n",
        "contract": "\n    assert isinstance(n, int)\n",
        "base_input": [[2], [3], [10], [13], [21]],
        "plus_input": [[1], [4], [49], [97], [7919]],
        "atol": 0,
    },
    {
        "task_id": "HumanEval/901",
        "entry_point": "circle_area",
        "prompt": 'import math\n\n\ndef circle_area(r: float) -> float:\n    """The area of a circle of radius r."""\n',
        "canonical_solution": "    return math.pi * r * r\n",
        "test": "def check(candidate):\n    assert abs(candidate(1.0) - 3.14159) < 1e-3\n",
        "contract": "",
        "base_input": [[1.0], [2.5]],
        "plus_input": [[0.1], [10.0], [123.456]],
        "atol": 1e-4,
    },
    {
        "task_id": "HumanEval/902",
        "entry_point": "fib",
        "prompt": 'def fib(n: int) -> int:\n    """The n-th Fibonacci number (fib(0) = 0, fib(1) = 1)."""\n',
        "canonical_solution": "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        "test": "def check(candidate):\n    assert candidate(10) == 55\n",
        "contract": "",
        "base_input": [[0], [1], [10]],
        "plus_input": [[20], [34], [36]],
        "atol": 0,
    },
]
# MBPP+ rows: a docstring prompt, `assertion`, and inputs rebuilt as evalplus does (task 2: tuples)
MBPP_PLUS = [
    {
        "task_id": "Mbpp/2",
        "entry_point": "similar_elements",
        "prompt": '"""\nWrite a function to find the shared elements from the given two lists.\n'
        'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n',
        "canonical_solution": "\ndef similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
        "assertion": "\nassert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n",
        "contract": "",
        "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4, 8], [5, 4, 3, 7]]],
        "plus_input": [[[1, 2, 3], [3, 9]], [[], [1]]],
        "atol": 0,
    }
]
RIGHT_ISH = {  # completions (after the row's prompt) and their (base, plus) verdicts
    "HumanEval/900": [
        (
            "    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))\n",
            True,
            True,
        ),
        # misses divisors at the square root: right on the base inputs, wrong on 4 and 49
        ("    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5)))\n", True, False),
        ("    return n > 1\n", False, False),
    ],
    "HumanEval/901": [
        ("    return round(math.pi * r * r, 6)\n", True, True),  # not equal, but within atol
        ("    return 3.14 * r * r\n", False, False),
        ("    return int(math.pi * r * r)\n", False, False),
    ],
    "HumanEval/902": [
        # exponential: fine on the base inputs, past the time limit on the plus inputs
        ("    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", True, False),
        ("    return undefined_name\n", False, False),
    ],
    "Mbpp/2": [
        ("def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n", True, True),  # a set oracle
        ("def similar_elements(a, b):\n    return tuple(set(a[:-1]) & set(b))\n", True, False),
    ],
}


def need_sandbox():
    try:
        sandbox.choose("auto", toolchains.readable_roots())
    except UserError as exc:
        pytest.skip(str(exc))


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def samples_of(task_list):
    rows = [{"task_id": t.task_id, "completion": t.reference} for t in task_list]
    for t in task_list:
        rows += [{"task_id": t.task_id, "completion": c} for c, _, _ in RIGHT_ISH[t.task_id]]
    return rows


def verdicts(rows):
    """(task id, completion id) -> (base passed, plus passed)."""
    return {(r["task_id"], r["completion_id"]): (r["base_passed"], r["passed"]) for r in rows}


def wanted(task_list):
    out = {}
    for t in task_list:
        out[(t.task_id, 0)] = (True, True)
        for i, (_, base, plus) in enumerate(RIGHT_ISH[t.task_id], 1):
            out[(t.task_id, i)] = (base, plus)
    return out


def test_plus_rows_are_never_read_as_humaneval_or_mbpp(tmp_path):
    assert detect_format(HUMANEVAL_PLUS) == "humaneval-plus"
    assert detect_format(MBPP_PLUS) == "mbpp-plus"
    no_assertion = [{k: v for k, v in r.items() if k != "assertion"} for r in MBPP_PLUS]
    assert detect_format(no_assertion) == "mbpp-plus"
    partial = [{k: v for k, v in HUMANEVAL_PLUS[0].items() if k != "atol"}]
    with pytest.raises(UserError, match="unknown benchmark format"):
        detect_format(partial, "partial.jsonl")  # HumanEval's fields, but plus_input: not plain HumanEval
    fmt, task_list = tasks(write(tmp_path / "HumanEvalPlus.jsonl", HUMANEVAL_PLUS))
    assert fmt == "humaneval-plus"
    assert task_list[0].prompt == HUMANEVAL_PLUS[0]["prompt"].strip() and "\ndef" in task_list[0].stop
    fmt, task_list = tasks(write(tmp_path / "MbppPlus.jsonl", MBPP_PLUS))
    assert fmt == "mbpp-plus" and task_list[0].prompt == MBPP_PLUS[0]["prompt"] and "\nassert" in task_list[0].stop


def test_base_and_plus_verdicts(tmp_path):
    need_sandbox()
    _, he = tasks(write(tmp_path / "HumanEvalPlus.jsonl", HUMANEVAL_PLUS))
    _, mbpp = tasks(write(tmp_path / "MbppPlus.jsonl", MBPP_PLUS))
    for name, task_list in (("he", he), ("mbpp", mbpp)):
        out = tmp_path / name
        summary = execute(task_list, samples_of(task_list), out, CFG)
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert verdicts(rows) == wanted(task_list), rows
        assert summary["base"]["pass@1"] > summary["overall"]["pass@1"]
        assert (out / "expected.jsonl").is_file()
    by_key = {
        (r["task_id"], r["completion_id"]): r
        for r in (json.loads(line) for line in (tmp_path / "he" / "results.jsonl").read_text().splitlines())
    }
    assert by_key[("HumanEval/902", 1)]["status"] == "timeout"  # the exponential one, on a plus input
    assert by_key[("HumanEval/900", 2)]["status"] == "failed"
    assert by_key[("HumanEval/902", 2)]["status"] == "runtime_error"


def test_expected_outputs_are_computed_once_and_a_row_may_carry_them(tmp_path):
    need_sandbox()
    _, task_list = tasks(write(tmp_path / "HumanEvalPlus.jsonl", HUMANEVAL_PLUS[:1]))
    samples = [{"task_id": "HumanEval/900", "completion": "    return n in (2, 3, 13, 97, 7919)\n"}]
    execute(task_list, samples, tmp_path / "out", CFG)
    kept = (tmp_path / "out" / "expected.jsonl").read_text()
    execute(
        task_list, samples + [{"task_id": "HumanEval/900", "completion": "    return False\n"}], tmp_path / "out", CFG
    )
    assert (tmp_path / "out" / "expected.jsonl").read_text() == kept  # not computed again
    # the row's own expected outputs are used: here ones that make the canonical solution wrong on 4
    row = dict(
        HUMANEVAL_PLUS[0], base_output=[True, True, False, True, False], plus_output=[False, True, False, True, True]
    )
    _, task_list = tasks(write(tmp_path / "carried.jsonl", [row]))
    summary = execute(
        task_list, [{"task_id": "HumanEval/900", "completion": row["canonical_solution"]}], tmp_path / "carried", CFG
    )
    assert summary["base"]["pass@1"] == 1.0 and summary["overall"]["pass@1"] == 0.0


def test_a_row_whose_expected_outputs_disagree_with_its_inputs_is_one_clear_error(tmp_path):
    row = dict(HUMANEVAL_PLUS[0], base_output=[True, True, False, True, False], plus_output=[False, False])
    with pytest.raises(UserError) as error:
        tasks(write(tmp_path / "bad.jsonl", [row]))
    message = str(error.value)
    assert "\n" not in message and "bad.jsonl" in message and "HumanEval/900" in message
    assert "plus_input has 5 inputs but plus_output has 2" in message


def test_evalplus_gives_the_same_verdicts(tmp_path):
    """The evalplus package's own evaluator (its ground truth and check_correctness) on the same
    tasks and samples."""
    try:
        from evalplus.evaluate import check_correctness
        from evalplus.gen.util import trusted_exec
    except ImportError as exc:
        pytest.skip(f"the evalplus package is not installed ({exc})")
    need_sandbox()
    from evalplus.data.mbpp import mbpp_deserialize_inputs

    for dataset, rows, name in (("humaneval", HUMANEVAL_PLUS, "he"), ("mbpp", MBPP_PLUS, "mbpp")):
        _, task_list = tasks(write(tmp_path / f"{name}.jsonl", rows))
        samples = samples_of(task_list)
        execute(task_list, samples, tmp_path / name, CFG)
        ours = verdicts([json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()])
        theirs = {}
        for row in rows:
            problem = dict(row)
            if dataset == "mbpp":
                for phase in ("base_input", "plus_input"):
                    problem[phase] = mbpp_deserialize_inputs(row["task_id"], row[phase])
            truth = {}
            for phase in ("base", "plus"):
                truth[phase], truth[f"{phase}_time"] = trusted_exec(
                    problem["prompt"] + problem["canonical_solution"],
                    problem[f"{phase}_input"],
                    problem["entry_point"],
                    record_time=True,
                )
            own = [s for s in samples if s["task_id"] == row["task_id"]]
            for i, sample in enumerate(own):
                result = check_correctness(
                    dataset, i, problem, problem["prompt"] + sample["completion"], truth, fast_check=True
                )
                base = result["base"][0] == "pass"
                theirs[(row["task_id"], i)] = (base, base and result["plus"][0] == "pass")
        assert ours == theirs
