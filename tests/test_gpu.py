"""The CUDA paths: bf16 training, resume, and generation on a GPU (skipped where there is none)."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import QUICK_TRAIN
from dscoder.cli import main
from dscoder.infer.engine import Engine, Sequence
from dscoder.infer.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n", "class Handler:\n    def __init__(self"]


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def cuda_run(small_corpus, trained_tokenizer_dir, tmp_path_factory):
    """40 bf16 steps of the tiny preset on the GPU, a checkpoint every 4 steps, all kept."""
    run = tmp_path_factory.mktemp("gpu") / "pretrain"
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
                "40",
                "--lr",
                "3e-3",
                "--loop.device=cuda",
                "--loop.precision=bf16",
                "--loop.keep_checkpoints=20",
            ]
        )
        == 0
    )
    assert torch.cuda.max_memory_allocated() > 0  # the steps ran on the GPU
    return run


def test_bf16_training_on_the_gpu_learns(cuda_run):
    curve = losses(cuda_run)
    assert len(curve) == 40 and curve[40] < curve[1] - 1.0
    assert all(loss == loss for loss in curve.values())  # no NaN


@pytest.mark.parametrize("device, tolerance", [("cuda", 1e-2), ("cpu", 3e-2)])
def test_gpu_run_resumes_from_a_checkpoint(device, tolerance, cuda_run, small_corpus, trained_tokenizer_dir, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(cuda_run, cut)
    shutil.rmtree(cut / "final")
    for folder in (cut / "checkpoints").iterdir():
        if int(folder.name.split("-")[1]) > 20:
            shutil.rmtree(folder)
    assert (
        main(
            [
                "train",
                "pretrain",
                "--resume",
                "--out",
                str(cut),
                "--data",
                str(small_corpus),
                "--tokenizer",
                str(trained_tokenizer_dir),
                "--preset",
                "tiny",
                *QUICK_TRAIN,
                "--max-steps",
                "40",
                "--lr",
                "3e-3",
                f"--loop.device={device}",
                "--loop.precision=bf16",
                "--loop.keep_checkpoints=20",
            ]
        )
        == 0
    )
    again, first = losses(cut), losses(cuda_run)
    assert sorted(again) == sorted(first)
    for step in range(21, 41):  # kernels differ across devices and are not all deterministic: agreement
        assert again[step] == pytest.approx(first[step], rel=tolerance)


def test_a_model_trained_on_the_gpu_gives_the_same_logits_on_the_cpu(cuda_run):
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    cpu = AutoModelForCausalLM.from_pretrained(cuda_run / "final", dtype=torch.float32)
    gpu = AutoModelForCausalLM.from_pretrained(cuda_run / "final", dtype=torch.float32).cuda()
    with torch.no_grad():
        a, b = cpu(ids).logits, gpu(ids.cuda()).logits.cpu()
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


def test_engine_on_the_gpu_matches_transformers_generate(cuda_run):
    engine = Engine.load(cuda_run / "final", dtype="float32", device="cuda")
    assert engine.device.type == "cuda"
    for text in PROMPTS:
        ids = engine.encode(text)
        (s,) = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=24))])
        reference = engine.model.generate(
            torch.tensor([ids], device="cuda"), max_new_tokens=24, do_sample=False, pad_token_id=engine.pad_id
        )[0, len(ids) :].tolist()
        eos = engine.tokenizer.eos_token_id
        assert s.token_ids == (reference[: reference.index(eos)] if eos in reference else reference)


def test_bf16_engine_batches_on_the_gpu(cuda_run):
    engine = Engine.load(cuda_run / "final", dtype="bfloat16", device="cuda")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    together = engine.generate([Sequence(engine.encode(t), SamplingParams(max_new_tokens=16)) for t in PROMPTS])
    assert all(s.finish_reason in ("length", "stop") and s.token_ids for s in together)
    # bf16 logits stay close to fp32 ones for the same prompt
    ids = torch.tensor([engine.encode(PROMPTS[0])], device="cuda")
    full = AutoModelForCausalLM.from_pretrained(cuda_run / "final", dtype=torch.float32).cuda()
    with torch.no_grad():
        half, exact = engine.model(ids).logits.float(), full(ids).logits
    assert (half - exact).abs().max() < 0.05 * exact.abs().max()
