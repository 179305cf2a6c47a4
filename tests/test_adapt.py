"""`dscoder adapt`: a model adapted to a user's repositories, measured on files it never saw."""

import json

import pytest

from conftest import PYTHON_REPO, STDLIB
from dscoder.cli import main

pytest.importorskip("peft", reason="adapt needs the train extra: pip install 'dscoder[train]'")

QUICK = ["--quick", "--steps", "6", "--seq-len", "64", "--batch-size", "4", "--eval-items", "8", "--held-out", "0.3"]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    mine = tmp_path_factory.mktemp("repos") / "mine"
    for path, text in PYTHON_REPO.items():
        (mine / path).parent.mkdir(parents=True, exist_ok=True)
        (mine / path).write_text(text)
    return [mine, STDLIB / "json"]


@pytest.fixture(scope="module")
def adapted(tiny_base_model, repos, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "out"
    assert main(["adapt", "--model", str(tiny_base_model), "--repos", *map(str, repos), "--out", str(out), *QUICK]) == 0
    return out


def test_the_report_compares_the_base_and_the_adapter_on_held_out_files(adapted):
    report = json.loads((adapted / "report.json").read_text())
    figures = report["figures"]
    assert {
        "loss",
        "fim_exact_match",
        "fim_edit_similarity",
        "cross_file_exact_match",
        "cross_file_identifier_match",
    } <= figures.keys()
    assert all(f["items"] > 0 for f in figures.values())
    assert figures["loss"]["after"] != figures["loss"]["before"]  # the adapter changed the model
    assert "| held-out loss" in (adapted / "report.md").read_text()
    adapter = adapted / "train" / "final"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_held_out_files_are_never_trained_on(adapted):
    from dscoder.data import corpus

    split = json.loads((adapted / "stages" / "split.json").read_text())
    held = {(name, path) for name, repo in split["repos"].items() for path in repo["files"]}
    assert held and all(len(repo["files"]) >= 1 for repo in split["repos"].values())
    for name, path in held:
        assert (adapted / "eval" / name / path).is_file() and not (adapted / "src" / name / path).exists()
    texts = "\n".join(corpus.iter_texts(adapted / "corpus"))
    for name, path in held:
        body = (adapted / "eval" / name / path).read_text()
        if len(body) > 200:
            assert body not in texts, path


def test_resume_reuses_every_stage_and_refuses_other_settings(adapted, tiny_base_model, repos, capsys):
    before = (adapted / "report.json").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in (adapted / "stages").iterdir()}
    args = ["adapt", "--model", str(tiny_base_model), "--repos", *map(str, repos), "--out", str(adapted), *QUICK]
    assert main([*args, "--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (adapted / "stages").iterdir()} == stamps
    assert json.loads((adapted / "report.json").read_text())["figures"] == json.loads(before)["figures"]
    capsys.readouterr()
    assert main([*args, "--resume", "--lora-rank", "4"]) == 2
    assert "was made with other settings (lora_rank 8, not 4)" in capsys.readouterr().err
    assert main(args) == 2 and "already exists (use --resume" in capsys.readouterr().err


def test_bad_input_is_one_line_and_writes_nothing(tiny_base_model, repos, tmp_path, capsys):
    quantized = tmp_path / "q8"
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(quantized)]) == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    capsys.readouterr()
    out = tmp_path / "out"
    cases = [
        ([str(repos[0]), str(tmp_path / "missing")], [], f"--repos {tmp_path / 'missing'}: not found"),
        ([str(repos[0]), str(repos[0])], [], "a repository is named twice"),
        ([str(repos[0])], ["--lora-rank", "5000"], "--lora-rank 5000 exceeds the"),
        ([str(repos[0])], ["--lora-targets", "qq"], "--lora-targets 'qq'"),
        ([str(repos[0])], ["--model", str(quantized)], "quantized; adapt the dense model"),
        ([str(repos[0])], ["--out", str(theirs), "--force"], "was not written by dscoder (no dscoder.json"),
    ]
    for repo_args, extra, needle in cases:
        args = {"--model": str(tiny_base_model), "--out": str(out)}
        args.update(dict(zip(extra[::2], extra[1::2])))
        flags = [x for pair in args.items() for x in pair] + [e for e in extra if e == "--force"]
        code = main(["adapt", *flags, "--repos", *repo_args, *QUICK])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (needle, err)
        assert not out.exists()
    assert (theirs / "notes.txt").read_text() == "keep me"


def test_instruct_adds_an_instruction_adapter_on_the_merged_model(tiny_base_model, repos, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "adapt",
                "--model",
                str(tiny_base_model),
                "--repos",
                *map(str, repos),
                "--out",
                str(out),
                *QUICK,
                "--instruct",
                "--steps",
                "2",
            ]
        )
        == 0
    )
    record = json.loads((out / "stages" / "instruct.json").read_text())
    assert record["pairs"] > 0 and record["steps"] == 2
    assert (out / "merged" / "config.json").is_file()
    config = json.loads((out / "instruct" / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "merged").resolve())
    eot = json.loads((out / "instruct" / "final" / "tokenizer_config.json").read_text())["eos_token"]
    assert eot == "<|EOT|>"
