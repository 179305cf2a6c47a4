"""Benchmarks, the sandbox, execution statuses and scores."""

import json
import os
from pathlib import Path

import pytest

from conftest import SHARED, need_shared
from dscoder.errors import UserError
from dscoder.evaluate import metrics, sandbox, toolchains
from dscoder.evaluate.benchmarks import tasks
from dscoder.evaluate.execute import ExecConfig, execute, read_samples, run_sample

BENCH = SHARED / "benchmarks"
CFG = ExecConfig(workers=2, timeout=10)


def run_all(task_list, samples, tmp_path):
    summary = execute(task_list, samples, tmp_path, CFG)
    rows = [json.loads(line_) for line_ in (tmp_path / "results.jsonl").read_text().splitlines()]
    return summary, rows


def need_tools(language):
    problem = toolchains.missing(language)
    if problem:
        pytest.skip(problem)


def test_pass_at_k_and_line_scores():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(10, 3, 10) == 1.0 and metrics.pass_at_k(5, 0, 1) == 0.0
    assert metrics.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert metrics.mean_pass_at_k([(10, 3), (10, 0)], 1) == pytest.approx(0.15)
    assert metrics.mean_pass_at_k([(1, 1)], 10) is None
    assert metrics.line_scores("    return x + 1\n", "return x + 1") == (True, 1.0)
    assert metrics.line_scores("return x - 1", "return x + 1")[1] == pytest.approx(1 - 1 / 12)


def test_humaneval_canonical_all_pass_and_empty_all_fail(tmp_path):
    _, task_list = tasks(need_shared(BENCH / "HumanEval.jsonl.gz"))
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in task_list]
    samples += [{"task_id": t.task_id, "completion": ""} for t in task_list]
    summary, rows = run_all(task_list, samples, tmp_path)
    assert sum(r["passed"] for r in rows if r["completion_id"] == 0) == 164
    assert sum(r["passed"] for r in rows if r["completion_id"] == 1) == 0
    assert summary["overall"]["pass@1"] == pytest.approx(0.5)
    assert summary["isolation"] == sandbox.choose("auto", toolchains.readable_roots()) != "none"


@pytest.mark.parametrize("language", ["python", "cpp", "java", "js", "go", "rust"])
def test_humaneval_x_canonical_solutions(language, tmp_path):
    fmt, task_list = tasks(need_shared(BENCH / f"humaneval-x-sample-{language}.jsonl"))
    need_tools(task_list[0].language)
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in task_list]
    samples += [{"task_id": t.task_id, "completion": ""} for t in task_list]
    _, rows = run_all(task_list, samples, tmp_path)
    assert [r["status"] for r in rows if r["completion_id"] == 0] == ["passed"] * 3, rows
    assert not any(r["passed"] for r in rows if r["completion_id"] == 1)


# Programs of our own for MultiPL-E's HumanEval_23_strlen: (right, wrong, broken) completions.
STRLEN = {
    "cpp": ("    return string.size();", "    return string.size() + 1;", "    return string.size("),
    "java": ("        return (long) string.length();", "        return 1l;", "        return string.length("),
    "js": ("  return string.length;\n}", "  return 2;\n}", None),
    "ts": ("  return string.length;\n}", "  return 2;\n}", "  return string.length * 'a';\n}"),
    "go": ("    return len(myString)\n}", "    return 3\n}", "    return len(myString\n}"),
    "rs": ("    string.len() as isize", "    1", "    string.len("),
    "sh": ('    echo -n "$1" | wc -c', "    echo 5", None),
}
BROKEN_STATUS = {
    "cpp": "compile_error",
    "java": "compile_error",
    "ts": "compile_error",
    "go": "compile_error",
    "rs": "compile_error",
}


@pytest.mark.parametrize("language", sorted(STRLEN))
def test_multipl_e_programs_of_our_own(language, tmp_path):
    fmt, task_list = tasks(need_shared(BENCH / f"multipl-e-humaneval-{language}.jsonl"))
    task = next(t for t in task_list if t.task_id == "HumanEval_23_strlen")
    need_tools(task.language)
    right, wrong, broken = STRLEN[language]
    samples = [{"task_id": task.task_id, "completion": c} for c in (right, wrong) + ((broken,) if broken else ())]
    _, rows = run_all([task], samples, tmp_path)
    assert rows[0]["status"] == "passed", rows[0]
    assert rows[1]["status"] == "failed", rows[1]
    if broken:
        assert rows[2]["status"] == BROKEN_STATUS[language], rows[2]


def test_mbpp_prompt_and_canonical_code(tmp_path):
    fmt, task_list = tasks(need_shared(BENCH / "mbpp.jsonl"))
    assert fmt == "mbpp" and len(task_list) == 500 and task_list[0].task_id == "11"
    prompt = task_list[0].prompt
    assert prompt.startswith(
        "You are an expert Python programmer, and here is your task: Write a function to find the similar"
    )
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3 and prompt.endswith("[BEGIN]\n")
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in task_list[:40]]
    summary, _ = run_all(task_list, samples, tmp_path)
    assert summary["overall"]["pass@1"] == 1.0


def test_infilling_scores(tmp_path):
    fmt, task_list = tasks(need_shared(BENCH / "HumanEval-SingleLineInfilling.jsonl.gz"))
    subset = task_list[:20]
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in subset]
    samples += [{"task_id": t.task_id, "completion": "    pass\n"} for t in subset]
    summary, rows = run_all(subset, samples, tmp_path)
    assert all(r["passed"] for r in rows if r["completion_id"] == 0)
    assert summary["fim"]["line_exact_match"] == pytest.approx(0.5)


def test_ds1000_records_of_our_own(tmp_path):
    code_context = (
        "import numpy as np\n"
        "def generate_test_case():\n    return np.array([[1, 2], [3, 4]])\n"
        "def test_execution(solution: str):\n"
        "    a = generate_test_case()\n"
        "    scope = {'np': np, 'a': a}\n"
        "    exec(solution, scope)\n"
        "    np.testing.assert_array_equal(scope['result'], a.T)\n"
    )
    records = [
        {
            "prompt": "Problem: transpose a.\n<code>\nimport numpy as np\na = ...\n</code>\nresult = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n",
            "reference_code": "result = a.T",
            "code_context": code_context,
            "metadata": {"problem_id": 0, "library": "Numpy"},
        },
        {
            "prompt": "import numpy as np\na = ...\n[insert]\nprint(result)\n",
            "reference_code": "result = np.transpose(a)",
            "code_context": code_context,
            "metadata": {"problem_id": 1, "library": "Numpy"},
        },
    ]
    fmt, task_list = tasks("ds1000.jsonl", records)
    assert fmt == "ds-1000" and task_list[1].suffix == "\nprint(result)\n"
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in task_list]
    samples += [{"task_id": "0", "completion": "result = a"}]
    _, rows = run_all(task_list, samples, tmp_path)
    assert [r["passed"] for r in rows] == [True, True, False]


def test_apps_records_of_our_own(tmp_path):
    records = [
        {
            "problem_id": 1,
            "question": "Read two integers and print their sum.",
            "starter_code": "",
            "input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}),
        },
        {
            "problem_id": 2,
            "question": "Return the largest element.",
            "starter_code": "class Solution:\n    def largest(self, xs):\n",
            "input_output": json.dumps(
                {"fn_name": "largest", "inputs": [[[1, 5, 2]], [[-1, -2]]], "outputs": [[5], [-1]]}
            ),
        },
    ]
    fmt, task_list = tasks("apps.jsonl", records)
    assert fmt == "apps" and "Use Standard Input format" in task_list[0].prompt and "Call-Based" in task_list[1].prompt
    samples = [
        {"task_id": "1", "completion": "a, b = map(int, input().split())\nprint(a + b)\n"},
        {"task_id": "1", "completion": "print(0)\n"},
        {"task_id": "2", "completion": "class Solution:\n    def largest(self, xs):\n        return max(xs)\n"},
        {"task_id": "2", "completion": "class Solution:\n    def largest(self, xs):\n        return min(xs)\n"},
    ]
    _, rows = run_all(task_list, samples, tmp_path)
    assert [r["status"] for r in rows] == ["passed", "failed", "passed", "failed"]


ATTACKS = {
    # two samples at once (two workers): the second looks for the first one's file everywhere it could write
    "neighbour_writes": ("import time\nopen({leak!r} + '_neighbour', 'w').write('x')\ntime.sleep(3)\n", "passed"),
    "neighbour_looks": (
        "import os, time\ntime.sleep(1)\nfound = [os.path.join(d, f) for top in ('/tmp', '/dev/shm', "
        "'/var/tmp', '/run') for d, _, fs in os.walk(top) for f in fs if f.endswith('_neighbour')]\n"
        "assert not found, found\n",
        "passed",
    ),
    "infinite_loop": ("while True:\n    pass\n", "timeout"),
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "timeout",
    ),
    "memory_bomb": ("x = []\nwhile True:\n    x.append(' ' * 10**7)\n", "runtime_error"),
    "write_outside": ("open({target!r}, 'w').write('pwned')\n", "runtime_error"),
    "delete_outside": ("import shutil\nshutil.rmtree({victim!r})\n", "runtime_error"),
    "network": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)\n", "runtime_error"),
    "kill_parent": (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\nassert False\n",
        None,
    ),
    "flood_output": ("import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n", "runtime_error"),
    "read_secrets": ("import os\nassert 'DSCODER_TEST_SECRET' not in os.environ, 'leaked'\n", "passed"),
    # the result's error text is read from .stderr: a link there must not make the host read a secret
    "link_output": ("import os, sys\nos.remove('.stderr')\nos.symlink({secret!r}, '.stderr')\nsys.exit(1)\n", None),
    "unmount_tmp": ("import subprocess\nassert subprocess.run(['umount', '-l', '/tmp']).returncode != 0\n", "passed"),
    "leave_shared_memory": (
        "from multiprocessing import shared_memory\n"
        "shared_memory.SharedMemory(name={leak!r}, create=True, size=1 << 20)\n"
        "import os\nos._exit(0)\n",
        "any",
    ),
    "leave_files_in_var_tmp": ("open('/var/tmp/' + {leak!r}, 'w').write('x')\n", "any"),
    "write_a_world_writable_folder": ("open({open_folder!r} + '/pwned', 'w').write('x')\n", "runtime_error"),
    "read_init_environment": (
        "import glob\nfor path in glob.glob('/proc/[0-9]*/environ'):\n    try:\n"
        "        assert b'DSCODER_TEST_SECRET' not in open(path, 'rb').read(), path\n"
        "    except OSError:\n        pass\n",
        "passed",
    ),
    "read_home": ("open({home_secret!r}).read()\n", "runtime_error"),
    "link_out_and_read": ("import os\nos.symlink({secret!r}, 'peek')\nprint(open('peek').read())\n", "runtime_error"),
    "ptrace_parent": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.ptrace(16, os.getppid(), 0, 0) != 0, 'attached to its parent'\n",
        "passed",
    ),
    "huge_output_line": ("import sys\nsys.stderr.write('y' * (200 << 20))\n", "any"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_safety_battery(mode, tmp_path, monkeypatch):
    problem = sandbox.problem_with(mode, toolchains.readable_roots())
    if problem:
        pytest.skip(f"--sandbox {mode}: {problem}")
    monkeypatch.setenv("DSCODER_TEST_SECRET", "hunter2")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    target = tmp_path / "pwned.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    secret.chmod(0o600)
    records = [
        {
            "task_id": f"attack/{name}",
            "prompt": "",
            "canonical_solution": "",
            "test": "def check(f):\n    pass\n",
            "entry_point": "print",
        }
        for name in ATTACKS
    ]
    _, task_list = tasks("attacks.jsonl", records)
    leak = f"dscoder_leak_{os.getpid()}_{mode}"
    open_folder = Path(__file__).resolve().parent / f".open-{leak}"  # writable by anyone, outside /tmp
    open_folder.mkdir()
    open_folder.chmod(0o777)
    home_secret = Path.home() / f".{leak}"  # a readable file in the user's home
    home_secret.write_text("the home's secret")
    home_secret.chmod(0o644)
    samples = [
        {
            "task_id": f"attack/{name}",
            "completion": code.format(
                target=str(target),
                victim=str(victim),
                secret=str(secret),
                leak=leak,
                open_folder=str(open_folder),
                home_secret=str(home_secret),
            ),
        }
        for name, (code, _) in ATTACKS.items()
    ]
    short = ExecConfig(workers=2, timeout=4, memory_mb=512, sandbox=mode)
    execute(task_list, samples, tmp_path / "out", short)
    rows = {
        r["task_id"].split("/")[1]: r
        for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())
    }
    for name, (_, expected) in ATTACKS.items():
        if expected == "any":  # what counts is what is left on the host (below)
            continue
        if expected:
            assert rows[name]["status"] == expected, (name, rows[name])
        else:
            assert rows[name]["status"] in ("failed", "runtime_error"), (name, rows[name])
    assert not target.exists() and (victim / "keep.txt").read_text() == "precious"
    assert "the host's secret" not in (tmp_path / "out" / "results.jsonl").read_text()
    assert not os.path.exists(f"/dev/shm/{leak}") and not os.path.exists(f"/var/tmp/{leak}")
    assert list(open_folder.iterdir()) == []
    open_folder.rmdir()
    home_secret.unlink()
    results = (tmp_path / "out" / "results.jsonl").read_text()
    assert "the home's secret" not in results and len(rows["huge_output_line"]["error"]) <= 2000
    assert os.getppid() > 1  # the test process and its parent are alive


def test_missing_toolchain_is_a_clear_skip(tmp_path, monkeypatch):
    fmt, task_list = tasks(need_shared(BENCH / "humaneval-x-sample-cpp.jsonl"))
    monkeypatch.setattr(toolchains.shutil, "which", lambda name: None if name == "g++" else "/usr/bin/" + name)
    toolchains.missing.cache_clear()
    try:
        row = run_sample(task_list[0], task_list[0].reference, CFG, "none", 0, tmp_path)
    finally:
        toolchains.missing.cache_clear()
    assert row["status"] == "skipped" and "install Debian package g++" in row["error"]


def test_samples_files_bad_rows_unknown_ids_and_resume(tmp_path, caplog):
    _, task_list = tasks(need_shared(BENCH / "HumanEval.jsonl.gz"))
    path = tmp_path / "samples.jsonl"
    path.write_bytes(
        b'{"task_id": "HumanEval/0", "completion": "    return False \\u00e9\\n"}\n'
        b'{"task_id": "Nope/1", "completion": "x"}\n'
        b'{"task_id": "HumanEval/2", "completion": "    return number % 1.0  # \xff\xfe\\n"}\n'.replace(
            b"\\u00e9", b"\xc3\xa9"
        )
    )
    samples = read_samples(path)
    summary = execute(task_list, samples, tmp_path / "out", CFG)
    assert "unknown task ids" in caplog.text
    rows = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 2 and summary["overall"]["samples"] == 2
    execute(task_list, samples, tmp_path / "out", CFG)
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2  # nothing ran twice
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        read_samples(bad)


def test_eval_run_and_report(tiny_base_model, tmp_path, capsys):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "run",
                "--model",
                str(tiny_base_model),
                "--benchmark",
                str(bench),
                "--out",
                str(out),
                "--limit",
                "3",
                "--max-new-tokens",
                "16",
            ]
        )
        == 0
    )
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["tasks"] == 3 and "pass@1" in summary["overall"]
    assert main(["eval", "report", str(out), "--out", str(tmp_path / "report.md")]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| base (3/164 tasks) |" in text and "DeepSeek-Coder-1.3B-base (published) | 34.8" in text
    assert "cover only part of the benchmark" in text
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_a_sample_leaves_nothing_behind_for_the_next(tmp_path):
    records = [
        {
            "task_id": f"seq/{i}",
            "prompt": "",
            "canonical_solution": "",
            "test": "def check(f):\n    pass\n",
            "entry_point": "print",
        }
        for i in range(2)
    ]
    _, task_list = tasks("seq.jsonl", records)
    first = (
        "import math, subprocess, sys, os\nmath.pi = 3\nopen('/tmp/left.txt', 'w').write('x')\n"
        "try:\n    open('../left.txt', 'w').write('x')\nexcept OSError:\n    pass\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
    )
    second = (
        "import math, os\nassert math.pi != 3, 'module state leaked'\nassert not os.path.exists('/tmp/left.txt')\n"
        "assert not os.path.exists('../left.txt')\n"
        "others = [p for p in os.listdir('/proc') if p.isdigit()]\nassert len(others) <= 3, others\n"
    )
    cfg = ExecConfig(workers=1, timeout=10)
    execute(
        task_list,
        [{"task_id": "seq/0", "completion": first}, {"task_id": "seq/1", "completion": second}],
        tmp_path,
        cfg,
    )
    rows = [json.loads(line_) for line_ in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["passed", "passed"], rows


def test_resume_reuses_only_results_of_the_same_sample_text(tmp_path, capsys):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    _, task_list = tasks(bench)
    samples = tmp_path / "samples.jsonl"

    def write(completions):
        samples.write_text(
            "".join(
                json.dumps({"task_id": t.task_id, "completion": c}) + "\n" for t, c in zip(task_list[:4], completions)
            )
        )

    def score(out):
        assert main(["eval", "execute", "--benchmark", str(bench), "--samples", str(samples), "--out", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())["overall"]["pass@1"]

    write([t.reference for t in task_list[:4]])
    assert score(tmp_path / "a") == 1.0
    write(["    return None\n"] * 4)  # the same file and task ids, other samples
    assert score(tmp_path / "a") == score(tmp_path / "fresh") == 0.0
    assert len((tmp_path / "a" / "results.jsonl").read_text().splitlines()) == 4

    other = tmp_path / "other.jsonl"
    other.write_text(samples.read_text())
    code = main(["eval", "execute", "--benchmark", str(bench), "--samples", str(other), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "holds the results of another run" in err and "--force" in err
    assert (
        main(
            [
                "eval",
                "execute",
                "--benchmark",
                str(bench),
                "--samples",
                str(other),
                "--out",
                str(tmp_path / "a"),
                "--timeout",
                "5",
            ]
        )
        == 2
    )  # other settings too
    capsys.readouterr()


def test_a_results_folder_belongs_to_one_model(tiny_base_model, tiny_instruct_model, tmp_path, capsys):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    out = tmp_path / "run"
    args = ["eval", "run", "--benchmark", str(bench), "--out", str(out), "--limit", "2", "--max-new-tokens", "8"]
    assert main([*args, "--model", str(tiny_base_model), "--name", "first"]) == 0
    before = (out / "results.jsonl").read_text()

    assert main([*args, "--model", str(tiny_instruct_model)]) == 2  # model B into model A's folder
    err = capsys.readouterr().err
    assert "holds the results of another run (source.model" in err and str(tiny_base_model) in err
    assert (out / "results.jsonl").read_text() == before
    assert main([*args[:-1], "9", "--model", str(tiny_base_model)]) == 2  # other generation settings
    assert "source.generation.max_new_tokens: 8 there, 9 now" in capsys.readouterr().err

    assert main([*args, "--model", str(tiny_base_model)]) == 0  # the same run again, without --name
    assert json.loads((out / "run.json").read_text())["name"] == "first"
    assert (out / "results.jsonl").read_text() == before

    assert main([*args, "--model", str(tiny_instruct_model), "--force"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["model"] for r in rows} == {str(tiny_instruct_model.resolve())}
    assert json.loads((out / "run.json").read_text())["name"] == "instruct"


def test_generate_does_not_mix_models_in_one_samples_file(tiny_base_model, tiny_instruct_model, tmp_path, capsys):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    out = tmp_path / "samples.jsonl"
    args = ["eval", "generate", "--benchmark", str(bench), "--out", str(out), "--limit", "2", "--max-new-tokens", "4"]
    assert main([*args, "--model", str(tiny_base_model)]) == 0
    assert main([*args, "--model", str(tiny_instruct_model)]) == 2
    assert "holds samples of model" in capsys.readouterr().err
    assert main([*args, "--model", str(tiny_instruct_model), "--limit", "3", "--force"]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_a_run_that_scored_nothing_is_an_error_and_a_partial_run_is_marked(tmp_path, capsys):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    samples = tmp_path / "unknown.jsonl"
    samples.write_text('{"task_id": "Nope/1", "completion": "x"}\n')
    code = main(["eval", "execute", "--benchmark", str(bench), "--samples", str(samples), "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err
    assert code == 2 and "none of its 1 samples belong to the benchmark" in err and not (tmp_path / "n").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "summary.json").write_text(
        json.dumps({"overall": {"tasks": 0, "samples": 0}, "languages": {}, "statuses": {"skipped": 3}})
    )
    assert main(["eval", "report", str(empty)]) == 2
    assert "scored no task (skipped 3)" in capsys.readouterr().err

    _, task_list = tasks(bench)
    samples.write_text(
        "".join(json.dumps({"task_id": t.task_id, "completion": t.reference}) + "\n" for t in task_list[:6])
    )
    assert (
        main(
            [
                "eval",
                "execute",
                "--benchmark",
                str(bench),
                "--samples",
                str(samples),
                "--out",
                str(tmp_path / "six"),
                "--name",
                "six",
            ]
        )
        == 0
    )
    assert "6 tasks of the benchmark's 164" in capsys.readouterr().out
    report = tmp_path / "reports" / "r.md"  # a folder that does not exist yet
    assert main(["eval", "report", str(tmp_path / "six"), "--out", str(report)]) == 0
    text = report.read_text()
    assert "| six (6/164 tasks) | 100.0 |" in text and "cover only part of the benchmark" in text
    assert main(["eval", "report", str(tmp_path / "six"), "--out", str(tmp_path)]) == 2  # a folder, not a file
    assert "is a folder" in capsys.readouterr().err


def test_a_run_whose_languages_are_all_missing_is_refused_before_any_sample(tmp_path, monkeypatch):
    import shutil

    fmt, task_list = tasks(need_shared(BENCH / "humaneval-x-sample-cpp.jsonl"))
    real_which = shutil.which
    monkeypatch.setattr(
        toolchains.shutil, "which", lambda name, *a, **k: None if name == "g++" else real_which(name, *a, **k)
    )
    toolchains.missing.cache_clear()
    try:
        with pytest.raises(UserError, match="no sample can run here: cpp needs g\\+\\+"):
            execute(
                task_list, [{"task_id": t.task_id, "completion": t.reference} for t in task_list], tmp_path / "o", CFG
            )
    finally:
        toolchains.missing.cache_clear()
    assert not (tmp_path / "o").exists()


def test_an_interrupted_resume_leaves_no_summary_of_the_old_samples(tmp_path, monkeypatch):
    from dscoder.evaluate import execute as execute_module

    _, task_list = tasks(need_shared(BENCH / "HumanEval.jsonl.gz"))
    good = [{"task_id": t.task_id, "completion": t.reference} for t in task_list[:3]]
    execute(task_list, good, tmp_path, CFG)
    assert (tmp_path / "summary.json").is_file()

    def killed(*args, **kwargs):
        raise ValueError("killed")

    monkeypatch.setattr(execute_module, "run_sample", killed)
    with pytest.raises(ValueError):
        execute(task_list, [{**s, "completion": "    return None\n"} for s in good], tmp_path, CFG)
    assert not (tmp_path / "summary.json").exists()  # no 100% left beside the new failing samples


def test_two_commands_never_write_into_one_results_folder(tmp_path, capsys):
    from dscoder.cli import main
    from dscoder.evaluate.execute import hold

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    _, task_list = tasks(bench)
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": task_list[0].task_id, "completion": task_list[0].reference}) + "\n")
    with hold(tmp_path / "out"):
        code = main(
            ["eval", "execute", "--benchmark", str(bench), "--samples", str(samples), "--out", str(tmp_path / "out")]
        )
    assert code == 2 and "another dscoder command is writing into this folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_samples_file_cut_short_by_a_crash_is_resumed_whole(tiny_base_model, tmp_path, capsys):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    out = tmp_path / "samples.jsonl"
    args = [
        "eval",
        "generate",
        "--benchmark",
        str(bench),
        "--out",
        str(out),
        "--model",
        str(tiny_base_model),
        "--max-new-tokens",
        "4",
    ]
    assert main([*args, "--limit", "2"]) == 0
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing the second row
    assert main([*args, "--limit", "3"]) == 0
    rows = read_samples(out)  # every line whole again
    assert sorted(r["task_id"] for r in rows) == sorted(t.task_id for t in tasks(bench)[1][:3])


def test_eval_run_checks_everything_before_it_writes_and_scores_only_n_samples(
    tiny_base_model, tiny_instruct_model, tmp_path, capsys
):
    from dscoder.cli import main

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    out = tmp_path / "run"
    common = ["--benchmark", str(bench), "--limit", "2", "--max-new-tokens", "4"]
    assert (
        main(["eval", "generate", "--model", str(tiny_base_model), "--out", str(out / "samples.jsonl"), *common]) == 0
    )
    assert main(["eval", "run", "--model", str(tiny_instruct_model), "--out", str(out), *common]) == 2
    assert "holds samples of model" in capsys.readouterr().err and not (out / "run.json").exists()

    sampled = [
        "eval",
        "run",
        "--model",
        str(tiny_base_model),
        "--out",
        str(tmp_path / "n"),
        *common,
        "--temperature",
        "0.8",
    ]
    assert main([*sampled, "--n", "3"]) == 0
    assert main([*sampled, "--n", "1"]) == 0
    summary = json.loads((tmp_path / "n" / "summary.json").read_text())
    assert summary["overall"]["samples"] == 2 and summary["overall"]["tasks"] == 2


@pytest.mark.alone
def test_time_limits_hold_on_a_busy_machine(tmp_path):
    """The canonical solutions all pass while two CPU-bound processes run alongside, with a
    time limit that is tight for this machine when it is idle: the limit grows with the load."""
    import subprocess
    import sys

    _, task_list = tasks(need_shared(BENCH / "HumanEval.jsonl.gz"))
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in task_list]
    idle = ExecConfig(workers=2, timeout=30, calibrate=False)
    execute(task_list, samples, tmp_path / "idle", idle)
    slowest = max(
        json.loads(line)["seconds"] for line in (tmp_path / "idle" / "results.jsonl").read_text().splitlines()
    )
    idle_factor = sandbox.load_factor(
        sandbox.choose("auto", toolchains.readable_roots()), toolchains.readable_roots(), 2, max_age=0
    )
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(2)]
    try:
        tight = ExecConfig(workers=2, timeout=max(0.2, 1.5 * slowest / idle_factor))
        sandbox._factors.clear()  # measure under the load
        summary = execute(task_list, samples, tmp_path / "busy", tight)
    finally:
        for hog in hogs:
            hog.kill()
    assert summary["statuses"] == {"passed": 164}, summary["statuses"]
    assert summary["load_factor"] > idle_factor * 1.3 and summary["timeout_seconds"] > tight.timeout


@pytest.mark.slow
def test_execute_killed_at_five_points_then_resumed_runs_each_sample_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    _, task_list = tasks(bench)
    slow = "    import time\n    time.sleep(0.01)\n"  # each call takes a moment, so kills land mid-run
    rows = [{"task_id": t.task_id, "completion": slow + t.reference} for t in task_list[:40]]
    rows += [{"task_id": t.task_id, "completion": "    return None\n"} for t in task_list[:40]]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def command(out):
        return [
            sys.executable,
            "-m",
            "dscoder",
            "-q",
            "eval",
            "execute",
            "--benchmark",
            str(bench),
            "--samples",
            str(samples),
            "--out",
            str(out),
            "--workers",
            "1",
        ]

    def outcome(out):
        results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        return sorted((r["task_id"], r["completion_id"], r["status"]) for r in results), results

    assert subprocess.run(command(tmp_path / "reference"), capture_output=True).returncode == 0
    out, landed = tmp_path / "killed", 0
    for lines in (1, 10, 25, 45, 65):
        process = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = out / "results.jsonl"
        while process.poll() is None and (not results.is_file() or len(results.read_text().splitlines()) < lines):
            time.sleep(0.002)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed += 1
    assert landed >= 4, f"only {landed} kills landed mid-run"
    assert subprocess.run(command(out), capture_output=True).returncode == 0
    keys, results = outcome(out)
    assert len({(r["task_id"], r["completion_id"]) for r in results}) == len(results) == 80  # none ran twice
    assert keys == outcome(tmp_path / "reference")[0]


def test_a_full_disk_stops_execute_in_one_line_and_it_resumes(tmp_path):
    """A results folder on a tiny tmpfs (root only): one line, then the same command with room
    resumes and finishes."""
    import shutil
    import subprocess
    import sys

    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a tmpfs of our own needs root and util-linux's unshare")
    bench = need_shared(BENCH / "HumanEval.jsonl.gz")
    _, task_list = tasks(bench)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"task_id": t.task_id, "completion": t.reference}) + "\n" for t in task_list[:60])
    )
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable,
        "-m",
        "dscoder",
        "-q",
        "eval",
        "execute",
        "--benchmark",
        str(bench),
        "--samples",
        str(samples),
        "--out",
        str(out),
    ]
    full = subprocess.run(
        ["unshare", "--mount", "--", "sh", "-c", f'mount -t tmpfs -o size=12k tmpfs {out} && "$@"', "sh", *command],
        capture_output=True,
        text=True,
    )
    lines = [line for line in full.stderr.splitlines() if line.startswith("dscoder: error:")]
    assert full.returncode == 2 and len(lines) == 1 and "cannot be written" in lines[0], full.stderr
    assert "Traceback" not in full.stderr
    assert subprocess.run(command, capture_output=True).returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statuses"] == {"passed": 60}


def _results_folder(folder, name, fmt, summary, generation=None):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    source = {"model": name, "generation": generation or {"temperature": 0.0}}
    (folder / "run.json").write_text(json.dumps({"name": name, "benchmark": {"format": fmt}, "source": source}))
    return folder


def test_report_keeps_every_run_and_compares_like_with_like(tmp_path, capsys):
    from dscoder.cli import main

    def summary(score, tasks=164, **extra):
        return {"overall": {"tasks": tasks, "pass@1": score}, "languages": {}, "tasks_in_benchmark": tasks} | extra

    local = _results_folder(tmp_path / "local", "m", "humaneval", summary(0.25))
    served = _results_folder(tmp_path / "served", "m", "humaneval", summary(0.5))
    fim = _results_folder(
        tmp_path / "fim",
        "fim",
        "humaneval-infilling",
        summary(None, 1033, fim={"line_exact_match": 0.6, "edit_similarity": 0.8}),
    )
    eight = {
        "overall": {"tasks": 1280, "pass@1": 0.3},
        "tasks_in_benchmark": 1280,
        "languages": {f"l{i}": {"pass@1": i / 10} for i in range(8)},
        "language_mean": {"languages": 8, "pass@1": 0.35},
    }
    he8 = _results_folder(tmp_path / "he8", "i", "humaneval-8lang", eight)
    lc = _results_folder(tmp_path / "lc", "i", "leetcode", summary(0.1, 180), generation={"cot": True})
    assert main(["eval", "report", str(local), str(served), str(fim), str(he8), str(lc)]) == 0
    text = capsys.readouterr().out
    assert f"| m [{local}] | 25.0 |" in text and f"| m [{served}] | 50.0 |" in text  # neither replaces the other

    def cells(start):
        line = next(line for line in text.splitlines() if line.startswith(start))
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header = cells("| model |")
    published = dict(zip(header, cells("| DeepSeek-Coder-1.3B-base (published)")))
    assert published["FIM line EM, Python"] == "57.4"  # the paper's Python figure, not its three-language mean 70.4
    assert "70.4" not in text
    assert dict(zip(header, cells(f"| i [{he8}]")))["HumanEval 8-lang"] == "35.0"  # the mean of the languages
    assert dict(zip(header, cells(f"| i [{lc}]")))["LeetCode CoT"] == "10.0"
    assert dict(zip(header, cells("| DeepSeek-Coder-6.7B-instruct (published)")))["LeetCode CoT"] == "21.1"
