"""LoRA adapters: training only the adapters, PEFT's format, merging, resuming, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import QUICK_TRAIN
from dscoder.cli import main

peft = pytest.importorskip("peft", reason="LoRA needs the train extra: pip install 'dscoder[train]'")

LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def adapter_run(tiny_base_model, small_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora") / "run"
    assert (
        main(
            [
                "train",
                "pretrain",
                "--model",
                str(tiny_base_model),
                "--data",
                str(small_corpus),
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "8",
                "--save-every",
                "4",
                *LORA,
            ]
        )
        == 0
    )
    return run


def base_weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_only_the_adapters_train_and_the_adapter_is_peft_s_format(adapter_run, tiny_base_model):
    final = adapter_run / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert not (final / "model.safetensors").exists()  # the base is not copied
    weights = load_file(str(final / "adapter_model.safetensors"))
    layers = json.loads((tiny_base_model / "config.json").read_text())["num_hidden_layers"]
    assert len(weights) == 2 * 7 * layers and all("lora_" in k for k in weights)
    assert all(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at 0: it trained
    record = json.loads((adapter_run / "dscoder.json").read_text())
    assert 0 < record["trainable_parameters"] < 0.2 * record["parameters"]


def test_the_base_is_frozen_and_only_adapters_get_gradients(tiny_base_model):
    from dscoder import model as model_lib
    from dscoder.train import lora

    model, _ = model_lib.load(tiny_base_model, dtype="float32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = lora.wrap(model, lora.LoraConfig(rank=4, dropout=0.0), "fp32", tiny_base_model)
    ids = torch.randint(0, 200, (2, 16))
    wrapped(input_ids=ids, labels=ids).loss.backward()
    graded = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    assert graded and all("lora_" in n for n in graded)
    assert all(p.grad.abs().sum() > 0 for n, p in wrapped.named_parameters() if "lora_B" in n)  # A: 0 while B is 0
    torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1).step()
    after = wrapped.get_base_model().state_dict()
    for name, value in before.items():
        key = (
            name.replace(".weight", ".base_layer.weight")
            if name.replace(".weight", ".base_layer.weight") in after
            else name
        )
        assert torch.equal(after[key], value), name


def test_peft_loads_the_adapter_and_the_merged_model_gives_the_same_logits(adapter_run, tiny_base_model, tmp_path):
    from dscoder import model as model_lib

    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100, 33, 34]])
    base, _ = model_lib.load(tiny_base_model, dtype="float32")
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    adapted = peft.PeftModel.from_pretrained(base, str(adapter_run / "final")).eval()
    with torch.no_grad():
        theirs = adapted(input_ids=ids).logits
    assert (theirs - plain).abs().max() > 1e-3  # the adapter changes the model
    assert (
        main(
            [
                "model",
                "merge",
                "--model",
                str(tiny_base_model),
                "--adapter",
                str(adapter_run / "final"),
                "--out",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    merged, _ = model_lib.load(tmp_path / "merged", dtype="float32")
    with torch.no_grad():
        ours = merged(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert sorted(base_weights(tmp_path / "merged")) == sorted(base_weights(tiny_base_model))


def test_a_killed_lora_run_resumes_to_the_same_adapter(adapter_run, tiny_base_model, small_corpus, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(adapter_run, run)
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-0000008")  # killed after the checkpoint of step 4
    assert (
        main(
            [
                "train",
                "pretrain",
                "--model",
                str(tiny_base_model),
                "--data",
                str(small_corpus),
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "8",
                "--save-every",
                "4",
                *LORA,
                "--resume",
            ]
        )
        == 0
    )
    whole = load_file(str(adapter_run / "final" / "adapter_model.safetensors"))
    again = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)


def test_instruction_tuning_with_lora_keeps_the_eot_stop(tiny_base_model, small_corpus, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["train", "make-instruct", str(small_corpus), "--out", str(pairs), "--max-pairs", "40"]) == 0
    run = tmp_path / "instruct"
    assert (
        main(
            [
                "train",
                "instruct",
                "--model",
                str(tiny_base_model),
                "--data",
                str(pairs),
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "2",
                "--save-every",
                "2",
                *LORA,
                "--lora-targets",
                "q,v",
            ]
        )
        == 0
    )
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (
        main(
            [
                "model",
                "merge",
                "--model",
                str(tiny_base_model),
                "--adapter",
                str(run / "final"),
                "--out",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    eot = json.loads((run / "final" / "tokenizer_config.json").read_text())["eos_token"]
    assert (
        eot == "<|EOT|>"
        and merged["eos_token_id"] != json.loads((tiny_base_model / "config.json").read_text())["eos_token_id"]
    )


@pytest.mark.parametrize("base", ["int8", "int4"])
def test_qlora_trains_adapters_on_a_quantized_base(tiny_base_model, small_corpus, tmp_path, base):
    run = tmp_path / "q"
    assert (
        main(
            [
                "train",
                "pretrain",
                "--model",
                str(tiny_base_model),
                "--data",
                str(small_corpus),
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "4",
                "--save-every",
                "4",
                *LORA,
                f"--lora.base={base}",
            ]
        )
        == 0
    )
    weights = load_file(str(run / "final" / "adapter_model.safetensors"))
    # gradients reach the first block's adapters through every quantized layer above them
    assert all(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k and ".layers.0." in k)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--lora-rank", "5000"], "--lora-rank 5000 exceeds the"),
        (["--lora-rank", "4", "--lora-targets", "q,attn"], "--lora-targets 'q,attn': expected some of q,k,v,o"),
        (["--lora-rank", "4", "--lora-targets", ","], "--lora-targets ',': expected"),
        (["--lora-rank", "-1"], "--lora-rank"),
        (["--lora-rank", "0"], "--lora-rank 0: expected a rank of at least 1"),
        (["--lora-rank", "4", "--lora.base=bfloat16", "--loop.precision=fp32"], "needs --loop.precision bf16"),
    ],
)
def test_bad_lora_settings_are_one_line_and_write_nothing(
    tiny_base_model, small_corpus, tmp_path, capsys, flags, needle
):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "pretrain",
            "--model",
            str(tiny_base_model),
            "--data",
            str(small_corpus),
            "--out",
            str(run),
            *QUICK_TRAIN,
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_lora_from_a_preset_is_refused(small_corpus, trained_tokenizer_dir, tmp_path, capsys):
    code = main(
        [
            "train",
            "pretrain",
            "--preset",
            "tiny",
            "--tokenizer",
            str(trained_tokenizer_dir),
            "--data",
            str(small_corpus),
            "--out",
            str(tmp_path / "run"),
            *QUICK_TRAIN,
            "--lora-rank",
            "4",
        ]
    )
    assert code == 2 and "--lora-rank adapts an existing model" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_merges_are_one_line_and_write_nothing(
    adapter_run, tiny_base_model, trained_tokenizer_dir, tmp_path, capsys
):
    other = tmp_path / "other"
    assert (
        main(
            [
                "model",
                "init",
                "--preset",
                "tiny",
                "--tokenizer",
                str(trained_tokenizer_dir),
                "--out",
                str(other),
                "--model.intermediate_size=200",
            ]
        )
        == 0
    )
    capsys.readouterr()
    quantized = tmp_path / "q8"
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(quantized)]) == 0
    capsys.readouterr()
    cases = [
        (["--model", str(other)], f"made for another model ({tiny_base_model.resolve()}): its "),
        (["--model", str(quantized)], "is quantized: merge into the dense base"),
        (["--adapter", str(tmp_path / "missing")], "no such folder"),
        (["--adapter", str(tiny_base_model)], "not a PEFT adapter folder"),
    ]
    for flags, needle in cases:
        args = {"--model": str(tiny_base_model), "--adapter": str(adapter_run / "final"), "--out": str(tmp_path / "m")}
        args.update(dict(zip(flags[::2], flags[1::2])))
        code = main(["model", "merge", *[x for pair in args.items() for x in pair]])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not (tmp_path / "m").exists()
