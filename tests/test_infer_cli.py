"""`dscoder complete | infill | repo-complete | chat` as a user runs them, with golden prompts."""

import io
import json
import shutil
import sys

from conftest import write_tree
from dscoder import formats
from dscoder.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def shown_prompt(out):
    assert out.startswith("=== prompt ===\n")
    return out[len("=== prompt ===\n") : out.index("\n=== completion ===\n")]


def test_complete_shows_the_exact_prompt(capsys, tiny_base_model):
    code, out, _ = run(
        capsys, "complete", "--model", tiny_base_model, "def add(a, b):\n", "--max-new-tokens", "8", "--show-prompt"
    )
    assert code == 0 and shown_prompt(out) == "def add(a, b):\n"
    code, streamed, _ = run(
        capsys, "complete", "--model", tiny_base_model, "def add(a, b):\n", "--max-new-tokens", "8", "--stream"
    )
    assert streamed == out.split("=== completion ===\n", 1)[1]


def test_bytes_that_are_not_utf8_in_a_prompt_are_replaced_with_a_warning(capsys, tiny_base_model, monkeypatch):
    """A byte that is not UTF-8 in an argument or on standard input reads as a lone surrogate
    ("\\udcff"), which no tokenizer takes: it is answered as U+FFFD, with a warning naming where."""
    code, out, err = run(capsys, "complete", "--model", tiny_base_model, "def f():\udcff", "--max-new-tokens", "4")
    assert code == 0 and "PROMPT: 1 byte(s) that are not UTF-8 text replaced by U+FFFD" in err, err
    assert run(capsys, "complete", "--model", tiny_base_model, "def f():\ufffd", "--max-new-tokens", "4")[1] == out
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"def f():\xff"), "utf-8", "surrogateescape"))
    code, piped, err = run(capsys, "complete", "--model", tiny_base_model, "-", "--max-new-tokens", "4")
    assert code == 0 and piped == out and "standard input: 1 byte(s)" in err
    code, out, err = run(
        capsys, "infill", "--model", tiny_base_model, "--prefix", "a\udcff", "--suffix", "\udcfe", "--show-prompt"
    )
    assert code == 0 and "--prefix: 1 byte(s)" in err and "--suffix: 1 byte(s)" in err
    assert shown_prompt(out) == formats.fim_prompt("a\ufffd", "\ufffd")


def test_infill_at_a_cursor_in_a_file(capsys, tiny_base_model, tmp_path):
    source = tmp_path / "calc.py"
    source.write_text("def area(r):\n    pi = 3.14\n    return pi * r * r\n")
    code, out, _ = run(
        capsys,
        "infill",
        "--model",
        tiny_base_model,
        "--file",
        source,
        "--line",
        "2",
        "--column",
        "4",
        "--max-new-tokens",
        "6",
        "--show-prompt",
    )
    assert code == 0
    assert (
        shown_prompt(out)
        == "<｜fim▁begin｜>def area(r):\n    <｜fim▁hole｜>pi = 3.14\n    return pi * r * r\n<｜fim▁end｜>"
    )


def test_repo_complete_puts_dependencies_first(capsys, tiny_base_model, tmp_path):
    repo = write_tree(
        tmp_path / "app",
        {
            "utils.py": "def load_data():\n    return [1, 2, 3]\n",
            "model.py": "from utils import load_data\n\n\nclass Model:\n    data = load_data()\n",
            "unrelated.py": "X = 1\n",
            "main.py": "from model import Model\n\nm = Model()\n",
        },
    )
    code, out, _ = run(
        capsys,
        "repo-complete",
        "--model",
        tiny_base_model,
        "--repo",
        repo,
        "--file",
        "main.py",
        "--max-new-tokens",
        "4",
        "--show-prompt",
    )
    assert code == 0
    assert shown_prompt(out) == (
        "#utils.py\ndef load_data():\n    return [1, 2, 3]\n"
        "#model.py\nfrom utils import load_data\n\n\nclass Model:\n    data = load_data()\n"
        "#main.py\nfrom model import Model\n\nm = Model()\n"
    )
    code, out, _ = run(
        capsys,
        "repo-complete",
        "--model",
        tiny_base_model,
        "--repo",
        repo,
        "--file",
        repo / "main.py",
        "--line",
        "2",
        "--max-new-tokens",
        "4",
        "--show-prompt",
    )
    prompt = shown_prompt(out)
    assert prompt.startswith("<｜fim▁begin｜>#utils.py\n") and prompt.endswith(
        "<｜fim▁hole｜>\nm = Model()\n<｜fim▁end｜>"
    )


def test_repo_complete_orders_a_package_rooted_repository_as_its_training_sample(capsys, tiny_base_model, tmp_path):
    # The repository's root is the package itself (`mypkg/__init__.py` as `__init__.py`), so
    # `from mypkg.core import run` resolves only with the repository's name, as in the data build.
    from collections import Counter

    from dscoder.data.stats import Stats
    from dscoder.data.steps import BuildConfig, process_repository
    from dscoder.repo.collect import read_repository

    leaves = {
        f"{name}.py": f"def {name}(value):\n    return value + {i}\n"
        for i, name in enumerate(["alpha", "beta", "gamma", "delta", "omega"])
    }
    repo = write_tree(
        tmp_path / "mypkg",
        leaves
        | {
            "__init__.py": '"""A package collected as its own repository."""\n',
            "core.py": "from mypkg.alpha import alpha\nfrom mypkg.beta import beta\n\n\ndef run(value):\n    return alpha(beta(value))\n",
            "main.py": "from mypkg.core import run\nfrom mypkg import gamma, delta, omega\n\n"
            "print(run(1), gamma.gamma(2), delta.delta(3), omega.omega(4))\n",
        },
    )
    code, out, _ = run(
        capsys,
        "repo-complete",
        "--model",
        tiny_base_model,
        "--repo",
        repo,
        "--file",
        "main.py",
        "--max-new-tokens",
        "4",
        "--show-prompt",
    )
    assert code == 0
    prompted = [line[1:] for line in shown_prompt(out).split("\n") if line.startswith("#") and line.endswith(".py")]
    assert prompted[-1] == "main.py" and sorted(prompted[:-1]) == sorted([*leaves, "core.py"])
    samples, _ = process_repository(
        read_repository(repo, BuildConfig().collect, Counter()), BuildConfig(), None, Stats()
    )
    (sample,) = [s for s in samples if "main.py" in s["paths"]]
    assert prompted[:-1] == [p for p in sample["paths"] if p != "main.py"]


def test_chat_one_shot_and_interactive(capsys, tiny_instruct_model, monkeypatch):
    code, out, _ = run(
        capsys,
        "chat",
        "--model",
        tiny_instruct_model,
        "--message",
        "Sort a list.",
        "--max-new-tokens",
        "6",
        "--show-prompt",
    )
    assert code == 0
    assert shown_prompt(out) == formats.render_chat(
        [{"role": "user", "content": "Sort a list."}], add_generation_prompt=True
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/reset\nAgain\n"))
    code, out, err = run(capsys, "chat", "--model", tiny_instruct_model, "--max-new-tokens", "4")
    assert code == 0 and "chatting with" in err


def test_bad_model_folders(capsys, tiny_base_model, tmp_path):
    code, _, err = run(capsys, "complete", "--model", tmp_path / "missing", "x")
    assert code == 2 and "model folder not found" in err
    partial = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_base_model, partial)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (partial / name).unlink()
    code, _, err = run(capsys, "complete", "--model", partial, "x")
    assert code == 2 and "no tokenizer files" in err and "Traceback" not in err


def test_serve_without_a_working_serve_stack_is_one_clear_line(capsys, tiny_base_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI (or one of its dependencies) failed to import
    code, _, err = run(capsys, "serve", "--model", tiny_base_model)
    assert code == 2 and "dscoder[serve]" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_model_folders_that_are_not_what_they_seem(capsys, tiny_base_model, tmp_path):
    run_folder = tiny_base_model.parent  # a training run: its model is final/
    for argv in (("model", "info", run_folder), ("complete", "--model", run_folder, "x")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"a training run, not a model folder: its model is {run_folder / 'final'}" in err

    edited = tmp_path / "edited"
    shutil.copytree(tiny_base_model, edited)
    config = json.loads((edited / "config.json").read_text())
    config["hidden_size"] //= 2
    (edited / "config.json").write_text(json.dumps(config))
    for argv in (("model", "info", edited), ("complete", "--model", edited, "x")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "the weights do not match config.json: model.embed_tokens.weight is" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_devices_this_machine_lacks_are_one_line(capsys, tiny_base_model):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU")
    for device, needle in (("cuda", "--device cuda: this machine has no CUDA devices"), ("tpu", "--device 'tpu'")):
        code, _, err = run(capsys, "complete", "--model", tiny_base_model, "x", "--device", device)
        assert code == 2 and needle in err and "Traceback" not in err


def test_a_long_prompt_gives_our_warning_not_the_libraries(capsys, tiny_base_model):
    code, _, err = run(capsys, "complete", "--model", tiny_base_model, "x " * 3000, "--max-new-tokens", "2")
    assert code == 0 and "were dropped" in err
    assert "Token indices sequence length" not in err


def test_quiet_silences_progress_bars_ours_and_the_libraries(tmp_path):
    import subprocess

    from conftest import STDLIB

    argv = [sys.executable, "-m", "dscoder", "tokenizer", "train", str(STDLIB / "json"), "--vocab-size", "300"]
    loud = subprocess.run(argv + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    quiet = subprocess.run(
        [argv[0], "-m", "dscoder", "-q", *argv[3:], "--out", str(tmp_path / "b")], capture_output=True, text=True
    )
    assert loud.returncode == quiet.returncode == 0
    assert "reading" in loud.stderr and "training a 300-token" in loud.stderr
    assert quiet.stderr.strip() == "", quiet.stderr
