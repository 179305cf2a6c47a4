"""LoRA against full fine-tuning, in the same run: peak memory, speed, held-out loss.

Memory, speed and trainable parameters on the 1.3B layout; the held-out loss after the same
continued-pretraining steps on `tiny`.

Every training run is `dscoder train pretrain --model ...` in its own process, with and without
`--lora-rank`, on the same data, batch and sequence length:
- 1.3B: the released layout (random weights, the released vocabulary when ../shared has it)
  trained a few steps by full fine-tuning, LoRA rank 16 on q,k,v,o,gate,up,down (base held in
  bf16) and the same LoRA on an int8 base (QLoRA-style). Peak memory is the process's max RSS
  (its whole life: loading, training, the final checkpoint); "while training" is the largest RSS
  sampled between the first and the last metrics line; tokens/s comes from metrics.jsonl without
  the first step. Where full fine-tuning's estimate (16 bytes/parameter for fp32 weights,
  gradients and AdamW's two moments, 2 for autocast's bf16 copies, 2 GiB besides) does not fit in
  the free memory, all three run at half the depth (then a quarter ...) and the table says so.
- tiny: a base pretrained briefly on some standard-library packages, then the same steps of
  continued pretraining on others, by full fine-tuning and by LoRA (rank 16, all 7 projections,
  10x the rate); the held-out loss of the base, of LoRA and of full fine-tuning on the same
  held-out windows of the new corpus (the loop's own evaluation).

Each training process gets --threads threads (OMP_NUM_THREADS, default 1). Where other work
shares the cores, a second thread waits for a busy core at every operation: on this project's
2-core CPU at load 2.5, a (256 x 16) @ (16 x 5504) bf16 product took 7.8 ms with two threads and
0.34 ms with one, and (256 x 2048) @ (2048 x 5504) 32.0 and 30.6 ms. LoRA's many small products
suffer most, so two threads on a busy machine measure the machine, not LoRA.

    python bench/bench_lora.py [--work DIR] [--steps 200] [--big-steps 6] [--layers N] [--threads 1]
        [--skip-1.3b] [--out results.json]

--work keeps the corpora, tokenizers and models in DIR and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GGUF = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "deepseek-coder-vocab"
    / "ggml-vocab-deepseek-coder.gguf"
)
BASE_PACKAGES = ("json", "email", "logging", "asyncio", "unittest", "multiprocessing", "concurrent", "importlib")
NEW_PACKAGES = ("http", "urllib", "xml", "xmlrpc", "wsgiref", "html", "tkinter", "idlelib")
ALL_PROJECTIONS = "q,k,v,o,gate,up,down"
BIG = "deepseek-coder-1.3b"
GIB = 2**30

# bytes per parameter of full fine-tuning: fp32 weights, gradients, AdamW's two moments, and the
# bf16 copies autocast makes of the weights in the forward pass
FULL_BYTES_PER_PARAMETER = 4 + 4 + 8 + 2


def dscoder(*args: str) -> None:
    """Run a dscoder command in its own process; exit with its error output when it fails."""
    done = subprocess.run([sys.executable, "-m", "dscoder", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dscoder {' '.join(args)} failed:\n{(done.stderr or '')[-3000:]}")


def flags(settings: dict[str, object]) -> list[str]:
    return [f"--{key}={value}" for key, value in settings.items()]


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_bytes(pid: int, field: str) -> int:
    """A process's VmRSS (now) or VmHWM (its peak since it started its program)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def metric_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):  # a line being written
        return []


def train(run: Path, model: Path, settings: dict[str, object], extra: list[str], weights: int) -> dict:
    """One `dscoder train pretrain --model` run in its own process: what it measured and its peak
    memory (max RSS of its whole life, and the largest RSS sampled while it trained). `weights`:
    the model's parameters (a full fine-tuning run records no counts; a LoRA run on an int8 base
    counts only the weights left unquantized)."""
    if run.exists():
        shutil.rmtree(run)
    command = [
        sys.executable,
        "-m",
        "dscoder",
        "train",
        "pretrain",
        "--model",
        str(model),
        "--out",
        str(run),
        *flags(settings),
        *extra,
    ]
    start, load = time.perf_counter(), os.getloadavg()[0]
    # Linux starts a child's ru_maxrss at its parent's peak: where it ends above ours it is the
    # child's own, else the child's VmHWM polled until it exits tells
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        metrics, steps, training_peak, polled_peak = run / "metrics.jsonl", settings["loop.max_steps"], 0, 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            polled_peak = max(polled_peak, memory_bytes(child.pid, "VmHWM"))
            seen = metric_lines(metrics)
            if seen and seen[-1].get("step", 0) < steps:  # between the first and the last step
                training_peak = max(training_peak, memory_bytes(child.pid, "VmRSS"))
            time.sleep(0.1)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            sys.exit(f"{' '.join(command)} failed:\n{err.read()[-3000:]}")
    lines = metric_lines(metrics)
    timed = [m for m in lines if m["step"] > 1 and "tokens_per_s" in m]  # one line a step, each step's own speed
    record = json.loads((run / "dscoder.json").read_text())
    return {
        "seconds": time.perf_counter() - start,
        "load_average": (load, os.getloadavg()[0]),
        "peak_bytes": usage.ru_maxrss * 1024 if usage.ru_maxrss * 1024 > ours else polled_peak,
        "training_peak_bytes": training_peak,
        "tokens_per_s": len(timed) / sum(1 / m["tokens_per_s"] for m in timed) if timed else None,
        "step_tokens_per_s": [round(m["tokens_per_s"], 2) for m in timed],
        "eval_loss": next((m["eval_loss"] for m in reversed(lines) if "eval_loss" in m), None),
        "trainable_parameters": record.get("trainable_parameters", weights),
        "parameters": weights,
    }


def stored_parameters(model: Path) -> int:
    """Weights in a model folder's safetensors files (from their headers)."""
    from safetensors import safe_open

    total = 0
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def parameters(hf_cfg: dict, layers: int) -> int:
    """Weights of a LLaMA layout with `layers` blocks (embedding and head untied)."""
    hidden, inner = hf_cfg["hidden_size"], hf_cfg["intermediate_size"]
    kv = hidden // hf_cfg["num_attention_heads"] * hf_cfg["num_key_value_heads"]
    block = 2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * inner + 2 * hidden
    return 2 * hf_cfg["vocab_size"] * hidden + layers * block + hidden


# --- data and models --------------------------------------------------------------------------------


def corpus(work: Path, name: str, packages: tuple[str, ...]) -> Path:
    out = work / name
    if not (out / "stats.json").is_file():
        print(f"building corpus {out} from the standard library's {', '.join(packages)}", flush=True)
        dscoder("data", "build", *[str(STDLIB / p) for p in packages], "--out", str(out), "--workers", "2", "--force")
    return out


def released_tokenizer(work: Path) -> tuple[Path, str]:
    out = work / "tokenizer-released"
    if (out / "tokenizer.json").is_file():
        return out, "the released vocabulary"
    if GGUF.is_file():
        dscoder("tokenizer", "import-gguf", str(GGUF), "--out", str(out), "--force")
        return out, "the released vocabulary"
    out = work / "tokenizer-32k"
    if not (out / "tokenizer.json").is_file():
        print(f"{GGUF} not present: training a 32,000-token vocabulary instead", flush=True)
        dscoder(
            "tokenizer",
            "train",
            *[str(STDLIB / p) for p in BASE_PACKAGES + NEW_PACKAGES],
            "--vocab-size",
            "32000",
            "--out",
            str(out),
            "--force",
        )
    return out, "a 32,000-token vocabulary trained on the standard library"


def big_model(work: Path, tokenizer: Path, layers: int) -> Path:
    out = work / f"1.3b-{layers}-layers"
    if not (out / "model.safetensors").is_file() and not any(out.glob("*.safetensors")):
        print(f"initialising {BIG} with {layers} layers into {out}", flush=True)
        dscoder(
            "model",
            "init",
            "--preset",
            BIG,
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(out),
            "--force",
            f"--model.num_hidden_layers={layers}",
        )
    return out


# --- the 1.3B layout: memory and speed ----------------------------------------------------------------


def bench_big(args, work: Path) -> dict:
    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib

    tokenizer, vocabulary = released_tokenizer(work)
    data = corpus(work, "corpus-base", BASE_PACKAGES)
    preset = model_lib.get_preset(BIG).config
    hf_cfg = model_lib.hf_config(preset, tokenizer_lib.load(tokenizer)).to_dict()
    depth = preset.num_hidden_layers
    full_params = parameters(hf_cfg, depth)
    free = available_bytes()
    budget = min(free - 2 * GIB, args.max_memory_gib * GIB)
    layers = args.layers or depth
    while not args.layers and layers > 1 and parameters(hf_cfg, layers) * FULL_BYTES_PER_PARAMETER + 2 * GIB > budget:
        layers //= 2
    print(
        f"\n{BIG}: {full_params / 1e9:.2f}B parameters at its {depth} layers ({vocabulary}); full fine-tuning "
        f"needs about {full_params * 16 / 1e9:.1f} GB for fp32 weights, gradients and AdamW, "
        f"{full_params * FULL_BYTES_PER_PARAMETER / 1e9:.1f} GB with autocast's bf16 copies, before activations; "
        f"{free / GIB:.1f} GiB available, this benchmark keeps under {budget / GIB:.1f} GiB",
        flush=True,
    )
    if layers != depth:
        print(
            f"  -> every 1.3B run below uses {layers} of the {depth} layers (--model.num_hidden_layers={layers}): "
            f"{parameters(hf_cfg, layers) / 1e9:.2f}B parameters",
            flush=True,
        )
    model = big_model(work, tokenizer, layers)
    settings = {
        "data.sources": data,
        "data.seq_len": args.big_seq_len,
        "loop.batch_size": 1,
        "loop.max_steps": args.big_steps,
        "loop.log_every": 1,
        "loop.eval_every": 0,
        "loop.save_every": 0,
        "loop.eval_batches": 1,
        "data.eval_fraction": 0.01,
        "data.cache_dir": work / "cache",
        "optim.lr": 1e-4,
    }
    lora = ["--lora-rank", "16", "--lora-targets", ALL_PROJECTIONS]
    variants = {"full fine-tuning": [], "LoRA r16, bf16 base": lora, "LoRA r16, int8 base": [*lora, "--lora.base=int8"]}
    token_cache(model, settings)
    results, weights = {}, stored_parameters(model)
    for name, extra in variants.items():
        print(f"  training {name}: {args.big_steps} steps of 1 x {args.big_seq_len} tokens ...", flush=True)
        run = work / "runs" / f"1.3b-{name.split(',')[-1].strip().replace(' ', '-')}"
        results[name] = train(run, model, settings, extra, weights)
        for folder in ("checkpoints", "final"):  # a full fine-tuning checkpoint holds gigabytes of optimizer state
            shutil.rmtree(run / folder, ignore_errors=True)
        r = results[name]
        print(
            f"    peak {r['peak_bytes'] / GIB:.2f} GiB, {r['tokens_per_s']:.1f} tokens/s, {r['seconds']:.0f} s",
            flush=True,
        )
    full = results["full fine-tuning"]
    print(
        f"\n{BIG}{f' at {layers} of {depth} layers' if layers != depth else ''}, "
        f"{parameters(hf_cfg, layers) / 1e9:.2f}B parameters, batch 1 x {args.big_seq_len} tokens, "
        f"{args.big_steps} steps, bf16 autocast, CPU ({args.threads} thread(s) a run, {os.cpu_count()} cores)"
    )
    print(
        f"  {'':22s} {'peak RSS':>10s} {'ratio':>6s} {'while training':>15s} {'ratio':>6s} "
        f"{'tokens/s':>9s} {'ratio':>6s} {'trainable':>15s} {'share':>7s} {'load':>9s}"
    )
    for name, r in results.items():
        print(
            f"  {name:22s} {r['peak_bytes'] / GIB:7.2f} GiB {r['peak_bytes'] / full['peak_bytes']:6.2f} "
            f"{r['training_peak_bytes'] / GIB:11.2f} GiB {r['training_peak_bytes'] / full['training_peak_bytes']:6.2f} "
            f"{r['tokens_per_s']:9.1f} {r['tokens_per_s'] / full['tokens_per_s']:6.2f} "
            f"{r['trainable_parameters']:15,} {r['trainable_parameters'] / r['parameters']:7.2%} "
            f"{r['load_average'][0]:4.1f}-{r['load_average'][1]:<4.1f}"
        )
    print(
        f"  load: the 1-minute load average at the start and end of each run ({os.cpu_count()} cores; other work "
        "on the machine slows tokens/s)"
    )
    outside = [name for name, r in results.items() if r["peak_bytes"] > 1.1 * r["training_peak_bytes"]]
    if outside:
        print(
            f"  the peak of {', '.join(outside)} came outside the training steps (loading the model, or the final "
            "checkpoint)"
        )
    lora_peak = results["LoRA r16, bf16 base"]["peak_bytes"] / full["peak_bytes"]
    print(
        f"  goal: LoRA under 40% of full fine-tuning's peak memory: {lora_peak:.0%} "
        f"({'met' if lora_peak < 0.4 else 'missed'})"
    )
    if layers != depth:
        scale = full_params / parameters(hf_cfg, layers)
        print(
            f"  at the full {depth} layers ({full_params / 1e9:.2f}B), by arithmetic: full fine-tuning "
            f"{full_params * 16 / GIB:.1f} GiB (16 bytes/parameter) + {full_params * 2 / GIB:.1f} GiB of bf16 copies "
            f"+ activations; scaling the measured peaks by the parameters ({scale:.2f}x): "
            + ", ".join(f"{name} {r['peak_bytes'] * scale / GIB:.1f} GiB" for name, r in results.items())
        )
    return {
        "preset": BIG,
        "layers": layers,
        "preset_layers": depth,
        "parameters_full_depth": full_params,
        "vocabulary": vocabulary,
        "available_bytes": free,
        "seq_len": args.big_seq_len,
        "steps": args.big_steps,
        "runs": results,
    }


# --- tiny: held-out loss after continued pretraining -----------------------------------------------------


def token_cache(model: Path, settings: dict[str, object]):
    """The runs' settings and the token cache of their corpus, built here before the measured runs
    (the first run would otherwise tokenize, and its peak memory include that)."""
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.train import dataset
    from dscoder.train.settings import resolve

    cfg = resolve("pretrain", None, {k: str(v) for k, v in settings.items()})
    tokenizer = tokenizer_lib.load(model)
    source = cfg.data.sources[0]
    return cfg, dataset.corpus_cache(source, tokenizer, cfg.fim, cfg.loop.seed, cfg.data, Path(cfg.data.cache_dir))


def base_eval_loss(model: Path, settings: dict[str, object], work: Path) -> float:
    """The held-out loss of `model` itself, with the runs' own evaluation on the same windows."""
    from transformers.utils import logging as hf_logging

    from dscoder import model as model_lib
    from dscoder.train import dataset
    from dscoder.train.loop import Trainer

    hf_logging.disable_progress_bar()
    cfg, cache = token_cache(model, settings)
    hf_model, _ = model_lib.load(model, dtype="float32")
    mixture = dataset.Mixture(
        [dataset.TokenFile(cache)], [1.0], cfg.data.seq_len, cfg.loop.seed, cfg.data.eval_fraction
    )
    trainer = Trainer(work / "runs" / "base-eval", hf_model, model, mixture, cfg.loop, cfg.optim, cfg.parallel, 0.0)
    return trainer.evaluate()


def bench_tiny(args, work: Path) -> dict:
    base_data = corpus(work, "corpus-base", BASE_PACKAGES)
    new_data = corpus(work, "corpus-new", NEW_PACKAGES)
    tokenizer = work / "tokenizer-4k"
    if not (tokenizer / "tokenizer.json").is_file():
        print("training a 4,000-token vocabulary on the base corpus", flush=True)
        dscoder("tokenizer", "train", str(base_data), "--vocab-size", "4000", "--out", str(tokenizer), "--force")
    common = {"data.seq_len": 256, "loop.batch_size": 8, "loop.log_every": 1, "data.cache_dir": work / "cache"}
    base_run = work / f"tiny-base-{args.base_steps}"
    if not (base_run / "final" / "model.safetensors").is_file():
        print(f"pretraining the tiny base: {args.base_steps} steps on {base_data.name} ...", flush=True)
        dscoder(
            "train",
            "pretrain",
            "--preset",
            "tiny",
            "--tokenizer",
            str(tokenizer),
            "--data",
            str(base_data),
            "--out",
            str(base_run),
            "--force",
            *flags(
                {
                    **common,
                    "loop.max_steps": args.base_steps,
                    "optim.lr": 3e-3,
                    "loop.eval_every": 0,
                    "loop.save_every": 0,
                }
            ),
        )
    base = base_run / "final"
    settings = {
        **common,
        "data.sources": new_data,
        "loop.max_steps": args.steps,
        "loop.eval_every": 0,
        "loop.save_every": 0,
        "loop.eval_batches": 16,
        "data.eval_fraction": 0.05,
    }
    rates = {"full fine-tuning": args.lr, "LoRA r16": 10 * args.lr}
    extras = {"full fine-tuning": [], "LoRA r16": ["--lora-rank", "16", "--lora-targets", ALL_PROJECTIONS]}
    results, weights = {}, stored_parameters(base)
    base_loss = base_eval_loss(base, {**settings, "optim.lr": args.lr}, work)
    for name, extra in extras.items():
        print(f"  continued pretraining, {name}: {args.steps} steps at lr {rates[name]:g} ...", flush=True)
        results[name] = train(
            work / "runs" / f"tiny-{name.split()[0].lower()}",
            base,
            {**settings, "optim.lr": rates[name]},
            extra,
            weights,
        )
    full, lora = results["full fine-tuning"], results["LoRA r16"]
    print(
        f"\ntiny, pretrained {args.base_steps} steps on {', '.join(BASE_PACKAGES)}; then {args.steps} steps of "
        f"8 x 256 tokens on {', '.join(NEW_PACKAGES)}, held-out loss on 16 x 8 held-out windows of those, "
        f"{args.threads} thread(s) a run"
    )
    print(
        f"  {'':18s} {'lr':>7s} {'held-out loss':>14s} {'/ full FT':>10s} {'gain':>6s} {'trainable':>11s} "
        f"{'tokens/s':>9s} {'peak RSS':>10s}"
    )
    print(f"  {'base':18s} {'':>7s} {base_loss:14.4f} {base_loss / full['eval_loss']:10.3f}")
    for name, r in results.items():
        gain = (base_loss - r["eval_loss"]) / (base_loss - full["eval_loss"])  # of full fine-tuning's improvement
        print(
            f"  {name:18s} {rates[name]:7.0e} {r['eval_loss']:14.4f} {r['eval_loss'] / full['eval_loss']:10.3f} "
            f"{gain:6.0%} {r['trainable_parameters']:11,} {r['tokens_per_s']:9.0f} {r['peak_bytes'] / 2**20:6.0f} MiB"
        )
    print("  gain: the share of full fine-tuning's improvement over the base")
    within = lora["eval_loss"] <= 1.1 * full["eval_loss"]
    print(
        f"  goals: LoRA within 10% of full fine-tuning's held-out loss: {lora['eval_loss'] / full['eval_loss'] - 1:+.1%} "
        f"({'met' if within else 'missed'}); below the base's: {lora['eval_loss'] - base_loss:+.4f} "
        f"({'met' if lora['eval_loss'] < base_loss else 'missed'})"
    )
    return {
        "base_steps": args.base_steps,
        "steps": args.steps,
        "base_eval_loss": base_loss,
        "lr": rates,
        "runs": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, help="folder for corpora, tokenizers and models, reused (default: a temporary one)"
    )
    parser.add_argument("--steps", type=int, default=200, help="continued-pretraining steps of the tiny runs")
    parser.add_argument("--base-steps", type=int, default=200, help="pretraining steps of the tiny base")
    parser.add_argument("--lr", type=float, default=3e-4, help="full fine-tuning's rate on tiny (LoRA: 10x)")
    parser.add_argument("--big-steps", type=int, default=6, help="steps of each 1.3B run")
    parser.add_argument("--big-seq-len", type=int, default=256, help="tokens per sequence of the 1.3B runs")
    parser.add_argument(
        "--layers",
        type=int,
        default=0,
        help="layers of the 1.3B runs (default: 24, halved until full fine-tuning fits)",
    )
    parser.add_argument("--max-memory-gib", type=float, default=20.0, help="most memory a 1.3B run may plan for")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of each training process (default 1: where other work shares the cores, a second thread "
        "makes every small operation wait for a busy core)",
    )
    parser.add_argument("--skip-1.3b", dest="skip_big", action="store_true", help="only the tiny comparison")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for every process started from here
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = {"tiny": bench_tiny(args, work)}
        if not args.skip_big:
            results["1.3b"] = bench_big(args, work)
    results["seconds"] = time.perf_counter() - started
    print(f"\nbenchmark took {results['seconds'] / 60:.1f} minutes")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
