"""The training stages end to end on a tiny model: loss, checkpoints, resume, DDP, extend, instruct."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import QUICK_TRAIN
from dscoder import formats
from dscoder.cli import main
from dscoder.train.instruct import instruct_encoder, trained_spans

COMPARED = ("step", "loss", "lr", "tokens", "grad_norm", "eval_loss")


def metrics(run):
    rows = [json.loads(line_) for line_ in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in COMPARED if k in r} for r in rows]


@pytest.fixture(scope="module")
def pretrained(small_corpus, trained_tokenizer_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pretrain"
    code = main(
        [
            "train",
            "pretrain",
            "--data",
            str(small_corpus),
            "--tokenizer",
            str(trained_tokenizer_dir),
            "--preset",
            "tiny",
            "--out",
            str(run),
            *QUICK_TRAIN,
            "--max-steps",
            "40",
            "--lr",
            "3e-3",
        ]
    )
    assert code == 0
    return run


def test_pretraining_learns_and_writes_a_run_folder(pretrained, capsys):
    rows = metrics(pretrained)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and losses[-1] < losses[0] - 1.0
    assert all(
        k in json.loads((pretrained / "metrics.jsonl").read_text().splitlines()[0])
        for k in ("step", "loss", "lr", "tokens", "tokens_per_s")
    )
    assert any("eval_loss" in r for r in rows)
    assert (pretrained / "loss.png").stat().st_size > 1000
    assert json.loads((pretrained / "config.json").read_text())["fim"]["rate"] == 0.5
    assert sorted(p.name for p in (pretrained / "checkpoints").iterdir()) == ["step-0000036", "step-0000040"]
    model = AutoModelForCausalLM.from_pretrained(pretrained / "final")
    tok = AutoTokenizer.from_pretrained(pretrained / "final")
    with torch.no_grad():
        assert model(**tok("import os\n", return_tensors="pt")).logits.shape[-1] == model.config.vocab_size
    assert main(["train", "report", str(pretrained)]) == 0
    assert "train loss" in capsys.readouterr().out


def test_lr_follows_warmup_and_the_step_schedule(pretrained):
    lrs = {r["step"]: r["lr"] for r in metrics(pretrained) if "lr" in r}
    peak = 3e-3
    assert lrs[1] == pytest.approx(peak / 2)  # 2 warm-up steps (5% of 40)
    assert lrs[10] == pytest.approx(peak)
    assert lrs[33] == pytest.approx(peak * 0.1**0.5)  # after 80% of the steps
    assert lrs[40] == pytest.approx(peak * 0.1)  # after 90%


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(small_corpus, trained_tokenizer_dir, tmp_path):
    base = [
        sys.executable,
        "-m",
        "dscoder",
        "train",
        "pretrain",
        "--data",
        str(small_corpus),
        "--tokenizer",
        str(trained_tokenizer_dir),
        "--preset",
        "tiny",
        *QUICK_TRAIN,
        "--max-steps",
        "16",
    ]
    reference = tmp_path / "reference"
    subprocess.run(base + ["--out", str(reference)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(base + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "step-0000008" / "training_state.pt").exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists(), "the kill should land mid-run"
    result = subprocess.run(base + ["--out", str(killed), "--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert metrics(killed) == metrics(reference)  # exact float equality
    a = AutoModelForCausalLM.from_pretrained(killed / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(reference / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(
    strategy, small_corpus, trained_tokenizer_dir, tmp_path
):
    common = [
        "--data",
        str(small_corpus),
        "--tokenizer",
        str(trained_tokenizer_dir),
        "--preset",
        "tiny",
        "--seq-len",
        "64",
        "--max-steps",
        "5",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--loop.log_every=1",
        "--loop.precision=fp32",
        "--data.eval_fraction=0.05",
    ]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "dscoder", "train", "pretrain", *common, "--batch-size", "4", "--out", str(single)],
        check=True,
        capture_output=True,
    )
    ddp = tmp_path / strategy
    port = {"ddp": "29517", "fsdp": "29518"}[strategy]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            port,
            "-m",
            "dscoder",
            "train",
            "pretrain",
            *common,
            f"--parallel.strategy={strategy}",
            "--batch-size",
            "2",
            "--out",
            str(ddp),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = metrics(single), metrics(ddp)
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_extend_sets_linear_rope_scaling(pretrained, small_corpus, tmp_path):
    run = tmp_path / "extend"
    assert (
        main(
            [
                "train",
                "extend",
                "--model",
                str(pretrained / "final"),
                "--data",
                str(small_corpus),
                "--rope-factor",
                "2",
                "--rope-theta",
                "50000",
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--seq-len",
                "2048",
                "--batch-size",
                "1",
                "--max-steps",
                "2",
                "--save-every",
                "2",
                "--loop.eval_batches=1",
            ]
        )
        == 0
    )
    data = json.loads((run / "final" / "config.json").read_text())
    assert data["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert data["rope_theta"] == 50000 and data["max_position_embeddings"] == 2048
    loaded = AutoConfig.from_pretrained(run / "final")
    assert loaded.rope_parameters["rope_type"] == "linear" and loaded.rope_parameters["factor"] == 2.0
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.model.rotary_emb.attention_scaling == 1.0 and model.config.max_position_embeddings == 2048


def test_instruct_masks_everything_but_responses(trained_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    messages = [
        {"role": "user", "content": "Add two numbers."},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
        {"role": "user", "content": "Now subtract."},
        {"role": "assistant", "content": "def sub(a, b):\n    return a - b"},
    ]
    text, spans = trained_spans(messages)
    assert [text[a:b] for a, b in spans] == [m["content"] + "\n<|EOT|>" for m in messages[1::2]]
    ((ids, mask),) = instruct_encoder(tok)([json.dumps(messages)])
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "def add(a, b):\n    return a + b\n<|EOT|>def sub(a, b):\n    return a - b\n<|EOT|>"
    assert ids[0] == tok.bos_token_id and not mask[0]


def test_instruction_pairs_count_lines_as_python_does():
    """A form feed (as in some standard-library copies) is not a line break for Python: the
    docstring is still cut out of the answer."""
    from dscoder.train.instruct import function_pairs

    source = 'import os\n\x0c\n\ndef walk_files(root):\n    """List every file below the root folder."""\n    names = os.listdir(root)\n    return names\n'
    (pair,) = function_pairs(source)
    assert pair["output"] == "```python\ndef walk_files(root):\n    names = os.listdir(root)\n    return names\n```"


def test_make_instruct_then_instruct(pretrained, small_corpus, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["train", "make-instruct", str(small_corpus), "--out", str(pairs), "--max-pairs", "200"]) == 0
    rows = [json.loads(line_) for line_ in pairs.read_text().splitlines()]
    assert len(rows) > 50 and all(r["instruction"].startswith("Write a Python function `") for r in rows)
    assert all(r["output"].startswith("```python\n") and '"""' not in r["output"].split("\n")[2] for r in rows[:20])
    run = tmp_path / "instruct"
    assert (
        main(
            [
                "train",
                "instruct",
                "--model",
                str(pretrained / "final"),
                "--data",
                str(pairs),
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "3",
                "--save-every",
                "3",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    final = run / "final"
    tok = AutoTokenizer.from_pretrained(final)
    eot = tok.convert_tokens_to_ids(formats.EOT)
    assert tok.eos_token == formats.EOT
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == eot
    assert json.loads((final / "config.json").read_text())["eos_token_id"] == eot


def test_refusals(pretrained, small_corpus, trained_tokenizer_dir, deepseek_tokenizer_dir, tmp_path, capsys):
    def refused(argv, needle):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err

    base = ["train", "pretrain", "--data", str(small_corpus)]
    refused(base + ["--model", str(pretrained / "final"), "--out", str(pretrained)], "already exists")
    refused(
        base + ["--model", str(pretrained / "final"), "--out", str(tmp_path / "a"), "--seq-len", "4096"],
        "exceeds the model's 1024 positions",
    )
    refused(
        base
        + [
            "--preset",
            "tiny",
            "--tokenizer",
            str(trained_tokenizer_dir),
            "--out",
            str(tmp_path / "b"),
            "--model",
            str(pretrained / "final"),
        ],
        "exactly one of --preset",
    )
    refused(
        [
            "train",
            "pretrain",
            "--data",
            str(tmp_path),
            "--preset",
            "tiny",
            "--tokenizer",
            str(trained_tokenizer_dir),
            "--out",
            str(tmp_path / "c"),
        ],
        "not a corpus folder",
    )
    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib

    mismatched = tmp_path / "mismatched"
    tok = tokenizer_lib.load(trained_tokenizer_dir)
    model_lib.save(
        mismatched,
        model_lib.hf_config(model_lib.get_preset("tiny").config, tok),
        trained_tokenizer_dir,
        model_lib.build(model_lib.hf_config(model_lib.get_preset("tiny").config, tok)),
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (mismatched / name).write_bytes((deepseek_tokenizer_dir / name).read_bytes())
    refused(base + ["--model", str(mismatched), "--out", str(tmp_path / "d")], "embedding rows")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    refused(
        ["train", "instruct", "--model", str(pretrained / "final"), "--data", str(bad), "--out", str(tmp_path / "e")],
        "bad.jsonl:1",
    )
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "cut \\ud83d", "output": "c"}\n')
    refused(
        ["train", "instruct", "--model", str(pretrained / "final"), "--data", str(bad), "--out", str(tmp_path / "e")],
        "bad.jsonl:2: holds half of a surrogate pair",
    )


def test_activation_checkpointing_gives_the_same_losses(small_corpus, trained_tokenizer_dir, tmp_path):
    losses = []
    for flag in ("false", "true"):
        run = tmp_path / flag
        assert (
            main(
                [
                    "train",
                    "pretrain",
                    "--data",
                    str(small_corpus),
                    "--tokenizer",
                    str(trained_tokenizer_dir),
                    "--preset",
                    "tiny",
                    "--out",
                    str(run),
                    *QUICK_TRAIN,
                    "--max-steps",
                    "3",
                    "--save-every",
                    "3",
                    "--loop.precision=fp32",
                    f"--loop.activation_checkpointing={flag}",
                ]
            )
            == 0
        )
        losses.append([r["loss"] for r in metrics(run) if "loss" in r])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_corrupt_corpus_shard_is_a_clear_error(small_corpus, trained_tokenizer_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(small_corpus, broken)
    next((broken / "data").glob("*.parquet")).write_bytes(b"PAR1 garbage")
    code = main(
        [
            "train",
            "pretrain",
            "--data",
            str(broken),
            "--tokenizer",
            str(trained_tokenizer_dir),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            *QUICK_TRAIN,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unreadable corpus shard" in err and "Traceback" not in err


def test_a_mistake_leaves_nothing_behind_and_the_corrected_command_runs(
    small_corpus, trained_tokenizer_dir, tmp_path, capsys
):
    """Each mistake is one line, before the run folder exists; the corrected command then runs
    (not "already exists", not "started with other settings" on --resume)."""
    run = tmp_path / "run"
    good = [
        "train",
        "pretrain",
        "--data",
        str(small_corpus),
        "--tokenizer",
        str(trained_tokenizer_dir),
        "--preset",
        "tiny",
        "--out",
        str(run),
        *QUICK_TRAIN,
        "--max-steps",
        "2",
        "--save-every",
        "2",
    ]

    def with_(old, new):
        argv = list(good)
        i = argv.index(old)
        argv[i : i + 1] = new
        return argv

    mistakes = [
        (with_("--data", ["--daat"]), "unrecognized argument '--daat'"),
        (with_("tiny", ["tinny"]), "unknown preset 'tinny'"),
        ([a for a in good if a not in ("--tokenizer", str(trained_tokenizer_dir))], "--preset needs --tokenizer"),
        (with_(str(small_corpus), [f"{tmp_path / 'nowhere'}:abc"]), "the weight after ':' must be a number"),
        (with_(str(small_corpus), [str(tmp_path)]), "not a corpus folder"),
        (good + ["--lr", "-1"], "--lr: must be greater than 0"),
        (good + ["--seq-len", "4096"], "exceeds the model's 1024 positions"),
        (good + ["--loop.device=cuda:7"], "--loop.device cuda:7"),
        (with_(str(trained_tokenizer_dir), [str(small_corpus)]), "no tokenizer files"),
    ]
    for argv, needle in mistakes:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (needle, err)
        assert not run.exists(), argv
    assert main(good) == 0
    assert main(good + ["--resume"]) == 0  # same settings: resumes
    capsys.readouterr()
    assert main(good + ["--resume", "--batch-size", "2"]) == 2  # another setting: named
    assert "started with other settings (loop.batch_size was 4, now 2)" in capsys.readouterr().err


def test_instruct_data_is_checked_whole_before_the_run_starts(pretrained, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n' * 50 + '{"instruction": "x"}\n')
    code = main(
        ["train", "instruct", "--model", str(pretrained / "final"), "--data", str(data), "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "pairs.jsonl:51" in err and not (tmp_path / "run").exists()


def test_a_held_out_share_too_small_for_one_batch_is_said(small_corpus, trained_tokenizer_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "pretrain",
                "--data",
                str(small_corpus),
                "--tokenizer",
                str(trained_tokenizer_dir),
                "--preset",
                "tiny",
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "2",
                "--eval-every",
                "1",
                "--data.eval_fraction=0.0001",
            ]
        )
        == 0
    )
    assert "no held-out loss will be recorded: data.eval_fraction 0.0001" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("eval_loss" in r for r in records)
