"""The demo end to end on a small slice of this machine's Python code and a short budget."""

import json
import os
import sys
from collections import namedtuple

import pytest

from dscoder.cli import main

KEYS = (
    "heldout_loss",
    "fim_line_exact_match",
    "fim_line_edit_similarity",
    "fim_line_loss",
    "fim_line_loss_prefix_only",
    "completion_parse_rate",
    "pass@1",
)


@pytest.mark.slow(seconds=200)
def test_quickstart_end_to_end_then_resume_then_existing_model(capsys, tmp_path, monkeypatch):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--minutes", "0.15", "--corpus-mb", "4"]) == 0
    stdout = capsys.readouterr().out
    assert "report.md" in stdout
    data = json.loads((out / "report.json").read_text())
    for key in KEYS:
        assert set(data[key]) == {"untrained", "no_fim", "fim", "instruct"}, key
    assert data["heldout_loss"]["fim"] < data["heldout_loss"]["untrained"] - 1.0  # it learned something
    assert all(
        stage in data["seconds"]
        for stage in (
            "corpus",
            "tokenizer",
            "pretrain-fim",
            "pretrain-no_fim",
            "extend",
            "instruct",
            "evaluate",
            "show",
        )
    )
    assert set(data["examples"]) == {"completion", "insertion", "repository", "chat", "server"}
    assert data["examples"]["repository"]["prompt"].startswith("#utils.py\n")
    assert not data["examples"]["server"]["output"].startswith("skipped")
    report = (out / "report.md").read_text()
    assert "FIM single-line exact match" in report and (out / "loss.png").is_file() and (out / "eval.png").is_file()
    extended = json.loads((out / "extend" / "final" / "config.json").read_text())
    assert extended["rope_scaling"] == {"type": "linear", "factor": 4.0}
    instruct = json.loads((out / "instruct" / "final" / "tokenizer_config.json").read_text())
    assert instruct["eos_token"] == "<|EOT|>"

    # Running again reuses every finished stage.
    assert main(["quickstart", "--out", str(out), "--minutes", "0.15", "--corpus-mb", "4"]) == 0
    _, err = capsys.readouterr()
    assert err.count("done before") >= 8

    # An existing model folder is evaluated and demonstrated without training; without a working
    # serve extra, the server example is skipped with the reason and everything else stands.
    monkeypatch.setitem(sys.modules, "fastapi", None)
    given = tmp_path / "given"
    assert (
        main(["quickstart", "--out", str(given), "--model", str(out / "pretrain-fim" / "final"), "--corpus-mb", "4"])
        == 0
    )
    data = json.loads((given / "report.json").read_text())
    assert set(data["heldout_loss"]) == {"given"} and not (given / "tokenizer").exists()
    assert not (given / "corpus").exists()  # evaluated only: no training corpus built
    assert "Evaluated on installed Python packages: " in (given / "report.md").read_text()

    # A folder holds one kind of run: the other kind is refused before anything is written
    assert main(["quickstart", "--out", str(given), "--minutes", "0.15", "--corpus-mb", "4"]) == 2
    assert "made by evaluating a given --model; give another --out" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(out), "--model", str(out / "pretrain-fim" / "final")]) == 2
    assert "made by training the demo's models" in capsys.readouterr().err
    assert data["examples"]["server"]["output"].startswith("skipped: serving needs the 'serve' extra")
    assert data["examples"]["chat"]["output"]


def test_quickstart_refuses_a_full_disk(capsys, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**9, 10**9 - 2**20, 2**20))
    assert main(["quickstart", "--out", str(tmp_path / "qs")]) == 2
    assert "GiB free" in capsys.readouterr().err


def test_quickstart_refuses_a_budget_that_is_not_positive(capsys, tmp_path):
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--minutes", "-1"]) == 2
    assert "--minutes: must be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()


def test_fim_cases_hide_whole_code_lines_only():
    from dscoder.evaluate.heldout import fim_cases

    text = (
        '"""Module docstring\nspanning lines."""\nimport os\n\n\ndef f(x):\n    # a comment line\n'
        "    total = x + 1\n    return total\n"
    )
    cases = fim_cases([text], 10, 0)
    assert {line for _, _, line in cases} == {"import os", "def f(x):", "    total = x + 1", "    return total"}
    for prefix, suffix, line in cases:
        assert prefix + line + "\n" + suffix == text


def test_fim_cases_windows_hold_whole_lines():
    from dscoder.evaluate.heldout import fim_cases

    text = "".join(f"value_{i} = compute({i}, factor={i * 7})\n" for i in range(200))
    for prefix, suffix, line in fim_cases([text], 20, 0, prefix_chars=300, suffix_chars=150):
        assert 0 < len(prefix) <= 300 and 0 < len(suffix) <= 150
        assert prefix.startswith("value_") and prefix.endswith("\n") and suffix.endswith("\n")
        assert prefix + line + "\n" + suffix in text


def test_edit_similarity_credits_near_misses_and_exact_match_does_not():
    from dscoder.evaluate.heldout import edit_similarity, exact_match

    cases = [("", "", "    return total"), ("", "", "    x = 1")]
    assert exact_match(["    return total", "    y = 2"], cases) == 0.5
    assert edit_similarity(["    return total", "    x = 1"], cases) == 1.0
    near = edit_similarity(["    return totals", "    x = 2"], cases)
    far = edit_similarity(["import os", "class A:"], cases)
    assert 0.8 < near < 1.0 and far < 0.4


def test_parse_check_keeps_finished_completions_whole_and_cuts_truncated_ones():
    from dscoder.evaluate.heldout import parses

    prompt = 'def add(a, b):\n    """Sum."""\n'
    assert parses(prompt, "    return a + b", finished=True)  # ended at a stop sequence: the line is complete
    assert not parses(prompt, "    return a + b", finished=False)  # cut by the limit: no complete line
    assert parses(prompt, "    total = a + b\n    return tot", finished=False)  # partial last line dropped
    assert not parses(prompt, "    return (a,\n            b, b, b", finished=False)  # unclosed bracket
    assert not parses(prompt, "    return a +", finished=True)


def test_function_prompts_take_functions_and_methods_out_to_column_0():
    import ast

    from dscoder.evaluate.heldout import function_prompts

    source = (
        'import os\n\n\ndef top(a):\n    """Top."""\n    return a\n\n\nclass Box:\n'
        '    @property\n    def size(self):\n        """The size,\n        in bytes."""\n        return 1\n\n'
        "    async def fetch(self,\n                    url):\n        await url\n\n"
        "    def flush(self) -> object: ...\n\n"  # a whole one-line function: nothing to complete
        "    def wrap(self, func):\n        @wraps(func)\n        def inner():\n            pass\n\n"
        "def one(): return 1\n\n"
        "class Tabbed:\n\tdef go(self):\n\t\treturn 1\n"
    )
    prompts = function_prompts([source, "def broken(:\n"], 20, seed=0)
    assert sorted(prompts) == sorted(
        [
            'def top(a):\n    """Top."""\n',
            'def size(self):\n    """The size,\n    in bytes."""\n',
            "async def fetch(self,\n                url):\n",
            "def wrap(self, func):\n",
            "def inner():\n",
            "def go(self):\n",
        ]
    )
    for prompt in prompts:  # each is a function header that a body completes
        ast.parse(prompt + ("\t" if "go" in prompt else "    ") + "pass\n")
    assert len(function_prompts([source], 2, seed=0)) == 2


@pytest.mark.alone
def test_the_training_budget_survives_load_present_only_during_the_probe(small_corpus, trained_tokenizer_dir, tmp_path):
    """Two CPU hogs while the speed probe runs make it plan too few steps; the FIM run then
    re-plans from the speed it measures and uses its budget, instead of stopping early."""
    import subprocess
    import time

    import torch

    from dscoder.quickstart.stages import QuickstartConfig, speed_probe, train_overrides
    from dscoder.train import checkpoint
    from dscoder.train.recipes import pretrain
    from dscoder.train.settings import resolve

    cfg = QuickstartConfig(minutes=0.15, seq_len=128, batch_size=4)
    hog = [sys.executable, "-c", "while True: pass"]  # one per core, whatever the machine has
    hogs = [subprocess.Popen(hog, start_new_session=True) for _ in range(os.cpu_count() or 2)]
    try:
        busy = speed_probe(cfg, small_corpus, trained_tokenizer_dir, tmp_path)
    finally:
        for hog in hogs:
            hog.kill()
    planned = int(cfg.minutes * 60 / busy)
    overrides = train_overrides(cfg, small_corpus, planned, 0.5) | {"loop.budget_minutes": str(cfg.minutes)}
    start = time.monotonic()
    result = pretrain(tmp_path / "run", resolve("pretrain", None, overrides), trained_tokenizer_dir, "tiny", None)
    seconds = time.monotonic() - start
    state = torch.load(checkpoint.latest(tmp_path / "run") / checkpoint.STATE, weights_only=False)
    # the plan followed the real speed: the budget is used (with the probe's plan, about half of it)
    assert state["elapsed"] > 0.85 * 60 * cfg.minutes, (state["elapsed"], result["step"], planned)
    assert seconds < 1.25 * 60 * cfg.minutes + 20  # and held (the cap is 1.25 x, plus start-up)


@pytest.mark.alone
@pytest.mark.parametrize("planned", [1, 6])
def test_a_plan_too_short_to_measure_still_uses_the_budget(small_corpus, trained_tokenizer_dir, tmp_path, planned):
    """A probe slowed so much by load that it plans one step, or a few: the run measures its own
    speed from its first steps and goes on until the budget is used, instead of stopping where the
    plan ended (with 6 steps planned, 70% of the plan came before a speed was measured)."""
    import time

    import torch

    from dscoder.quickstart.stages import QuickstartConfig, train_overrides
    from dscoder.train import checkpoint
    from dscoder.train.recipes import pretrain
    from dscoder.train.settings import resolve

    cfg = QuickstartConfig(minutes=0.1, seq_len=128, batch_size=4)
    overrides = train_overrides(cfg, small_corpus, planned, 0.5) | {"loop.budget_minutes": str(cfg.minutes)}
    start = time.monotonic()
    result = pretrain(tmp_path / "run", resolve("pretrain", None, overrides), trained_tokenizer_dir, "tiny", None)
    seconds = time.monotonic() - start
    state = torch.load(checkpoint.latest(tmp_path / "run") / checkpoint.STATE, weights_only=False)
    assert state["elapsed"] > 0.85 * 60 * cfg.minutes, (state["elapsed"], result["step"])  # the budget used
    assert seconds < 1.25 * 60 * cfg.minutes + 20
