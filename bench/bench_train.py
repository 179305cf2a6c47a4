"""Training-step throughput and peak memory: dscoder's loop against a plain transformers loop.

Both train the same preset on the same packed batches of installed Python code:
- plain: LlamaForCausalLM in fp32, `model(input_ids, labels=...)`, torch.optim.AdamW (on a GPU also
  under bf16 autocast, the usual first step of a hand-written loop);
- dscoder: the Trainer's step (bf16 autocast on the weights kept in fp32, fused AdamW, SDPA,
  optionally torch.compile, freed memory kept for reuse on the CPU: dscoder.allocator), run again
  with glibc's malloc defaults to show what the allocator settings give (on the CPU only).
Each variant runs in its own process so peak memory (max RSS, or CUDA max allocated) is its own.

    python bench/bench_train.py [--preset small] [--seq-len 256] [--batch-size 8] [--steps 20] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from dscoder import allocator

PEAK_BF16 = 989e12  # dense bf16 matrix rate of an H100 / H200 SXM (the FLOPs utilisation's denominator)


def prepare(folder: Path, seq_len: int) -> tuple[Path, Path]:
    """A tokenizer and a token cache from the standard library (made once per folder)."""
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.data.installed import installed_python_roots
    from dscoder.texts import read_texts
    from dscoder.train.dataset import build_cache

    tok_dir, cache = folder / "tokenizer", folder / "tokens"
    if not (tok_dir / "tokenizer.json").is_file():
        texts = read_texts(installed_python_roots()[:1], Counter(), max_bytes=12_000_000)
        tok_dir.mkdir(parents=True, exist_ok=True)
        tokenizer_lib.save(tokenizer_lib.train(texts, 8000, show_progress=False), tok_dir)
        tok = tokenizer_lib.load(tok_dir)
        backend = tok.backend_tokenizer

        def encode(batch):
            return [
                ([tok.bos_token_id, *e.ids, tok.eos_token_id], None)
                for e in backend.encode_batch(batch, add_special_tokens=False)
            ]

        build_cache(cache, {"source": "stdlib"}, texts, encode, 256, len(tok))
    return tok_dir, cache


def run_variant(args) -> dict:
    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.config import apply_overrides
    from dscoder.train.dataset import Mixture, TokenFile
    from dscoder.train.distributed import ParallelConfig
    from dscoder.train.loop import LoopConfig, Trainer
    from dscoder.train.schedule import OptimConfig

    folder = Path(args.work)
    tok = tokenizer_lib.load(folder / "tokenizer")
    cfg = apply_overrides(model_lib.get_preset(args.preset).config, {"dtype": "float32"})
    hf_model = model_lib.build(model_lib.hf_config(cfg, tok), seed=0)
    mixture = Mixture([TokenFile(folder / "tokens")], [1.0], args.seq_len, seed=0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lr = 3e-4
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.variant == "plain-bf16")
    if args.variant == "dscoder":
        loop = LoopConfig(
            max_steps=args.steps + args.warmup,
            batch_size=args.batch_size,
            precision="bf16",
            compile=args.compile,
            device=device.type,
        )
        trainer = Trainer(
            folder / "run", hf_model, folder / "tokenizer", mixture, loop, OptimConfig(lr=lr), ParallelConfig(), lr
        )
        step = trainer.train_step
    else:
        model = hf_model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

        def step():
            tokens, _ = mixture.next_batch(args.batch_size)
            batch = torch.from_numpy(tokens[:, :-1]).to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return float(loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    c, parameters = hf_model.config, sum(p.numel() for p in hf_model.parameters())
    return {
        "tokens_per_s": args.steps * args.batch_size * args.seq_len / seconds,
        "peak_bytes": peak,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "parameters": parameters,
        "flops_per_token": 6 * parameters + 12 * c.num_hidden_layers * c.hidden_size * args.seq_len,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also compile dscoder's model")
    parser.add_argument("--variant", choices=["dscoder", "plain", "plain-bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    with tempfile.TemporaryDirectory() as work:
        prepare(Path(work), args.seq_len)
        results = {}
        variants = [("plain", "plain", {}), ("dscoder", "dscoder", {})]
        if torch.cuda.is_available():
            variants.insert(1, ("plain, bf16 autocast", "plain-bf16", {}))
        else:
            variants.append(("dscoder, glibc malloc defaults", "dscoder", {allocator.DISABLE_ENV: "0"}))
        for name, variant, env in variants:
            command = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--work",
                work,
                "--preset",
                args.preset,
                "--seq-len",
                str(args.seq_len),
                "--batch-size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ] + (["--compile"] if args.compile else [])
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ | env)
            if done.returncode != 0:
                sys.exit(f"variant {name!r} failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    plain, ours = results["plain"], results["dscoder"]
    print(
        f"preset {args.preset} ({ours['parameters'] / 1e6:.1f}M parameters), seq_len {args.seq_len}, "
        f"batch {args.batch_size}, {args.steps} timed steps on {ours['device']}"
    )
    for name, r in results.items():
        print(f"  {name:31s} {r['tokens_per_s']:10,.0f} tokens/s   peak memory {r['peak_bytes'] / 2**20:8,.0f} MiB")
    print(
        f"  speed ratio dscoder / plain: {ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x; "
        f"memory ratio: {ours['peak_bytes'] / plain['peak_bytes']:.2f}x"
    )
    if torch.cuda.is_available():
        print(
            f"  dscoder model FLOPs utilisation: {100 * ours['tokens_per_s'] * ours['flops_per_token'] / PEAK_BF16:.0f}% "
            f"of {PEAK_BF16 / 1e12:.0f} TFLOP/s (dense bf16, H100/H200 datasheet)"
        )
    if "plain, bf16 autocast" in results:
        peer = results["plain, bf16 autocast"]
        print(
            f"  speed ratio dscoder / plain bf16 autocast: {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x; "
            f"memory ratio: {ours['peak_bytes'] / peer['peak_bytes']:.2f}x"
        )
    if "dscoder, glibc malloc defaults" in results:
        kept = results["dscoder, glibc malloc defaults"]
        print(
            f"  speed ratio of keeping freed memory (dscoder.allocator): {ours['tokens_per_s'] / kept['tokens_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
