"""The `dscoder` command as a user runs it: results, refusals and one-line errors."""

import json
import subprocess
import sys

import pytest

from conftest import GGUF, STDLIB, need_shared
from dscoder.cli import main


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line_ for line_ in err.strip().splitlines() if line_.startswith("dscoder: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def no_partials(folder):
    return not [p for p in folder.iterdir() if ".partial" in p.name]


def test_import_gguf_then_refuse_existing_then_force(capsys, tmp_path):
    need_shared(GGUF)
    out = tmp_path / "tok"
    code, stdout, _ = run(capsys, "tokenizer", "import-gguf", GGUF, "--out", out)
    assert code == 0 and "32022 tokens" in stdout
    assert json.loads((out / "dscoder.json").read_text())["kind"] == "tokenizer"
    before = (out / "tokenizer.json").stat().st_mtime_ns
    code, _, err = run(capsys, "tokenizer", "import-gguf", GGUF, "--out", out)
    assert_one_line_error(code, err, "already exists", "--force")
    assert (out / "tokenizer.json").stat().st_mtime_ns == before
    code, _, _ = run(capsys, "tokenizer", "import-gguf", GGUF, "--out", out, "--force")
    assert code == 0 and no_partials(tmp_path)


def test_missing_and_corrupt_gguf(capsys, tmp_path):
    code, _, err = run(capsys, "tokenizer", "import-gguf", tmp_path / "missing.gguf", "--out", tmp_path / "a")
    assert_one_line_error(code, err, "not found", "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    code, _, err = run(capsys, "tokenizer", "import-gguf", bad, "--out", tmp_path / "b")
    assert_one_line_error(code, err, "bad.gguf")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and no_partials(tmp_path)


def test_tokenizer_train_on_a_folder_with_bad_files(capsys, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted((STDLIB / "json").glob("*.py")):
        (src / path.name).write_bytes(path.read_bytes())
    (src / "blob.py").write_bytes(b"\x00\x01\x02binary")
    (src / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    out = tmp_path / "tok"
    code, stdout, err = run(capsys, "tokenizer", "train", src, "--vocab-size", "500", "--out", out)
    assert code == 0, err
    assert "binary 1" in err and "non_utf8_decoded_latin1 1" in err
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 509


def test_tokenizer_train_refuses_a_tiny_vocabulary(capsys, tmp_path):
    code, _, err = run(capsys, "tokenizer", "train", STDLIB / "json", "--vocab-size", "5", "--out", tmp_path / "t")
    assert_one_line_error(code, err, "--vocab-size: must be at least 256, got 5")
    assert not (tmp_path / "t").exists()


def test_tokenizer_train_missing_input(capsys, tmp_path):
    code, _, err = run(
        capsys, "tokenizer", "train", tmp_path / "nowhere", "--vocab-size", "300", "--out", tmp_path / "t"
    )
    assert_one_line_error(code, err, "input not found")


def test_model_init_with_overrides_and_info(capsys, tmp_path, trained_tokenizer_dir):
    toml = tmp_path / "m.toml"
    toml.write_text("[model]\nhidden_size = 64\nintermediate_size = 160\n")
    out = tmp_path / "m"
    code, stdout, err = run(
        capsys,
        "model",
        "init",
        "--preset",
        "tiny",
        "--tokenizer",
        trained_tokenizer_dir,
        "--out",
        out,
        "--config",
        toml,
        "--model.num_hidden_layers=2",
        "--model.intermediate_size",
        "192",
    )
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (64, 192, 2)
    record = json.loads((out / "dscoder.json").read_text())
    assert record["config"]["num_hidden_layers"] == 2 and record["preset"] == "tiny"

    code, stdout, _ = run(capsys, "model", "info", out)
    assert code == 0 and "2 layers, hidden 64" in stdout and "float32" in stdout
    code, stdout, _ = run(capsys, "model", "info", out, "--json")
    info = json.loads(stdout)
    assert info["saved_parameters"] == info["parameters"]["total"]


def test_model_init_errors(capsys, tmp_path, trained_tokenizer_dir):
    base = ["model", "init", "--tokenizer", trained_tokenizer_dir]
    code, _, err = run(capsys, *base, "--preset", "huge", "--out", tmp_path / "a")
    assert_one_line_error(code, err, "unknown preset 'huge'")
    code, _, err = run(capsys, *base, "--preset", "tiny", "--out", tmp_path / "b", "--model.hiden_size=3")
    assert_one_line_error(code, err, "unknown setting 'model.hiden_size'")
    code, _, err = run(capsys, *base, "--preset", "tiny", "--out", tmp_path / "c", "--model.hidden_size=big")
    assert_one_line_error(code, err, "model.hidden_size", "expected int")
    code, _, err = run(capsys, *base, "--preset", "tiny", "--out", tmp_path / "d", "--train.lr=1")
    assert_one_line_error(code, err, "--train.lr")
    code, _, err = run(capsys, "model", "init", "--preset", "tiny", "--tokenizer", tmp_path, "--out", tmp_path / "e")
    assert_one_line_error(code, err, "no tokenizer files")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_weights_33b_layout(capsys, tmp_path, deepseek_tokenizer_dir):
    out = tmp_path / "33b"
    code, stdout, _ = run(
        capsys,
        "model",
        "init",
        "--preset",
        "deepseek-coder-33b",
        "--tokenizer",
        deepseek_tokenizer_dir,
        "--out",
        out,
        "--no-weights",
    )
    assert code == 0 and "config only" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "dscoder.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    code, stdout, _ = run(capsys, "model", "info", out)
    assert "33.34 B" in stdout and "grouped-query" in stdout and "no weights saved" in stdout
    assert "linear scaling x4" in stdout


def test_model_info_on_a_missing_folder(capsys, tmp_path):
    code, _, err = run(capsys, "model", "info", tmp_path)
    assert_one_line_error(code, err, "not a model folder")


def test_every_command_has_help():
    for argv in (
        ["--help"],
        ["tokenizer", "--help"],
        ["tokenizer", "train", "--help"],
        ["tokenizer", "import-gguf", "--help"],
        ["model", "init", "--help"],
        ["model", "info", "--help"],
        ["model", "presets"],
        ["quickstart", "--help"],
    ):
        result = subprocess.run([sys.executable, "-m", "dscoder", *argv], capture_output=True, text=True)
        assert result.returncode == 0, (argv, result.stderr)
        assert result.stdout.strip()


def test_unknown_flag_is_an_argparse_error(capsys):
    code, _, err = run(capsys, "model", "info", "x", "--bogus")
    assert_one_line_error(code, err, "unrecognized arguments: --bogus")


def all_commands(parser=None, prefix=()):
    """Every runnable command's argv prefix and parser, e.g. (("train", "pretrain"), parser)."""
    import argparse

    from dscoder.cli import build_parser

    parser = parser or build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from all_commands(child, (*prefix, name))


def test_every_command_help_shows_its_defaults_and_an_example():
    commands = list(all_commands())
    assert len(commands) >= 22
    for argv, parser in commands:
        text = parser.format_help()
        assert "example:\n  dscoder " + " ".join(argv) in text, argv
        for action in parser._actions:
            if (
                action.option_strings
                and action.help
                and action.default is not None
                and action.default is not False
                and action.default not in ("==SUPPRESS==", [])
            ):
                assert "default" in parser._get_formatter()._get_help_string(action), (argv, action.dest)


# Numeric options of every command: {command: (other arguments, {flag: values that are valid})}.
# Every other value of 0, -1, NaN and a huge number must be refused in one line naming the flag,
# before any work.
ZERO_OK = ("0",)
LORA_FLAGS = {"--lora-rank": (), "--lora-alpha": ZERO_OK, "--lora-dropout": ZERO_OK, "--lora-targets": ()}
NUMERIC = {
    ("tokenizer", "train"): (["in", "--out", "OUT"], {"--vocab-size": (), "--min-frequency": (), "--max-bytes": ()}),
    ("model", "init"): (["--preset", "tiny", "--tokenizer", "t", "--out", "OUT"], {"--seed": ZERO_OK}),
    ("quickstart",): (["--out", "OUT"], {"--minutes": (), "--corpus-mb": ()}),
    **{
        ("experiment", name): (["--out", "OUT"], {"--minutes": (), "--seeds": (), "--seq-len": ()})
        for name in ("fim-rate", "repo-level", "extend")
    },
    ("data", "build"): (["src", "--out", "OUT"], {"--workers": ZERO_OK}),
    ("train", "pretrain"): (
        ["--data", "d", "--preset", "tiny", "--tokenizer", "t", "--out", "OUT"],
        {
            "--max-steps": (),
            "--seq-len": (),
            "--batch-size": (),
            "--grad-accum": (),
            "--lr": (),
            "--fim-rate": ZERO_OK,
            "--seed": ZERO_OK,
            "--eval-every": ZERO_OK,
            "--save-every": ZERO_OK,
            **LORA_FLAGS,
        },
    ),
    ("train", "extend"): (
        ["--model", "m", "--data", "d", "--out", "OUT"],
        {
            "--max-steps": (),
            "--seq-len": (),
            "--batch-size": (),
            "--grad-accum": (),
            "--lr": (),
            "--fim-rate": ZERO_OK,
            "--seed": ZERO_OK,
            "--eval-every": ZERO_OK,
            "--save-every": ZERO_OK,
            "--rope-factor": (),
            "--rope-theta": (),
        },
    ),
    ("train", "instruct"): (
        ["--model", "m", "--data", "d.jsonl", "--out", "OUT"],
        {
            "--max-steps": (),
            "--seq-len": (),
            "--batch-size": (),
            "--grad-accum": (),
            "--lr": (),
            "--fim-rate": ZERO_OK,
            "--seed": ZERO_OK,
            "--eval-every": ZERO_OK,
            "--save-every": ZERO_OK,
            **LORA_FLAGS,
        },
    ),
    ("train", "make-instruct"): (["c", "--out", "OUT"], {"--max-pairs": ()}),
    **{
        (command,): (
            args,
            {
                "--max-new-tokens": (),
                "--temperature": ZERO_OK,
                "--top-p": (),
                "--top-k": ZERO_OK,
                "--seed": ZERO_OK,
                **extra,
            },
        )
        for command, args, extra in (
            ("complete", ["--model", "m", "x"], {}),
            ("infill", ["--model", "m", "--file", "f.py"], {"--line": (), "--column": ZERO_OK}),
            ("repo-complete", ["--model", "m", "--repo", "r", "--file", "f.py"], {"--line": (), "--column": ZERO_OK}),
            ("chat", ["--model", "m", "--message", "hi"], {}),
        )
    },
    ("serve",): (
        ["--model", "m"],
        {
            "--port": (),
            "--max-batch": (),
            "--max-tokens": (),
            "--infill-window": (),
            "--context": (),
            "--max-prompt-ms": (),
        },
    ),
    ("eval", "generate"): (
        ["--model", "m", "--benchmark", "b", "--out", "OUT"],
        {
            "--n": (),
            "--temperature": ZERO_OK,
            "--top-p": (),
            "--max-new-tokens": (),
            "--batch-size": (),
            "--seed": ZERO_OK,
            "--limit": (),
            "--concurrency": (),
        },
    ),
    ("eval", "execute"): (
        ["--benchmark", "b", "--samples", "s", "--out", "OUT"],
        {"--workers": ZERO_OK, "--timeout": ()},
    ),
    ("eval", "run"): (
        ["--model", "m", "--benchmark", "b", "--out", "OUT"],
        {
            "--n": (),
            "--temperature": ZERO_OK,
            "--top-p": (),
            "--max-new-tokens": (),
            "--batch-size": (),
            "--seed": ZERO_OK,
            "--limit": (),
            "--workers": ZERO_OK,
            "--timeout": (),
            "--concurrency": (),
        },
    ),
    ("eval", "contamination"): (["--benchmark", "b", "c"], {"--n": ()}),
    ("adapt",): (
        ["--model", "m", "--repos", "r", "--out", "OUT"],
        {
            "--held-out": (),
            "--steps": (),
            "--minutes": ZERO_OK,
            "--seq-len": (),
            "--batch-size": (),
            "--lr": (),
            "--fim-rate": ZERO_OK,
            "--lora-rank": (),
            "--lora-alpha": ZERO_OK,
            "--lora-targets": (),
            "--eval-items": (),
            "--seed": ZERO_OK,
        },
    ),
}
BAD = ("0", "-1", "nan", "1e400", "99999999999999999999999")


def test_the_table_covers_every_numeric_option_of_every_command():
    from pathlib import Path

    for argv, parser in all_commands():
        numeric = {
            a.option_strings[-1]
            for a in parser._actions
            if a.option_strings and a.type not in (None, str, Path) and not a.choices
        }
        assert numeric == set(NUMERIC.get(argv, ((), {}))[1]), argv


@pytest.mark.parametrize("command", list(NUMERIC), ids=" ".join)
def test_numeric_options_are_checked_before_any_work(command, capsys, tmp_path):
    args, flags = NUMERIC[command]
    for flag, valid in flags.items():
        for value in BAD:
            if value in valid:
                continue
            out = tmp_path / "out"
            argv = [*command] + [str(out) if a == "OUT" else a for a in args] + [flag, value]
            code, _, err = run(capsys, *argv)
            assert code == 2, (argv, err)
            assert_one_line_error(code, err, flag)
            assert not out.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["model", "init", "--preset", "tiny", "--tokenizer", "t", "--model.hidden_size=0"],
            "model.hidden_size: must be at least 1",
        ),
        (
            ["model", "init", "--preset", "tiny", "--tokenizer", "t", "--model.max_position_embeddings=0"],
            "model.max_position_embeddings: must be at least 1",
        ),
        (
            ["model", "init", "--preset", "tiny", "--tokenizer", "t", "--model.rope_theta=nan"],
            "model.rope_theta: expected a finite",
        ),
        (["data", "build", "src", "--dedup.threshold=2"], "dedup.threshold: must be between 0 and 1"),
        (["data", "build", "src", "--filters.max_line_length=-5"], "filters.max_line_length: must be at least 1"),
        (
            ["train", "pretrain", "--data", "d", "--preset", "tiny", "--tokenizer", "t", "--optim.weight_decay=-1"],
            "optim.weight_decay: must be at least 0",
        ),
        (
            ["train", "pretrain", "--data", "d", "--preset", "tiny", "--tokenizer", "t", "--loop.device=tpu"],
            "--loop.device 'tpu'",
        ),
        (
            ["train", "instruct", "--model", "m", "--data", "d.jsonl", "--logger", "tensorbord"],
            "--logger: expected one of 'none', 'tensorboard', 'wandb', got 'tensorbord'",
        ),
    ],
)
def test_settings_are_checked_before_any_work(argv, needle, capsys, tmp_path):
    code, _, err = run(capsys, *argv, "--out", tmp_path / "out")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_config_file_is_held_to_the_same_bounds(capsys, tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text("[fim]\nrate = 2.0\n")
    code, _, err = run(
        capsys,
        "train",
        "pretrain",
        "--data",
        "d",
        "--preset",
        "tiny",
        "--tokenizer",
        "t",
        "--config",
        toml,
        "--out",
        tmp_path / "out",
    )
    assert_one_line_error(code, err, "fim.rate: must be between 0 and 1, got 2")
    assert not (tmp_path / "out").exists()


def test_a_reader_that_goes_away_is_not_a_traceback():
    """`dscoder ... | head -1`: the command stops quietly when its reader closes the pipe."""
    result = subprocess.run(
        f"{sys.executable} -m dscoder model presets | head -1", shell=True, capture_output=True, text=True
    )
    assert result.stdout.startswith("deepseek-coder-1.3b") and "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr
