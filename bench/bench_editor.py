"""An editor's traffic: a stretch of typing replayed against `/infill`, with the prompt cache and
without it.

The file is the standard library's `queue.py` (326 lines). From its middle, 40 lines are typed
one after another; for each, the editor asks for a single-line insertion with the line half
typed (the rest of the file is the suffix), as llama.vim does on every cursor move. Each request
goes through the server's application (FastAPI's test client, no network) to the same engine;
`cache_prompt` is true or false. Reported: p50/p95 time to the first token and to the last,
tokens prefilled per request, tokens taken from the cache, and the ratios. The tiny preset, then
the 1.3B preset with random weights (int8 by default; fewer requests without the cache, which
takes seconds each).

The server keeps at most `--window` tokens of the file around the cursor (its `--infill-window`,
llama.cpp's n_batch; default the server's 2048), so a keystroke prefills at most the window's
quarter after the cursor again.

    python bench/bench_editor.py [--requests 40] [--big-requests 10] [--skip-1.3b] [--big-quantize int8] [--window 2048]
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dscoder import model as model_lib
from dscoder import quantize
from dscoder import tokenizer as tokenizer_lib
from dscoder.infer.engine import Engine
from dscoder.infer.server import ServeLimits, create_app

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "deepseek-coder-vocab" / "ggml-vocab-deepseek-coder.gguf"
SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "queue.py"


def session(requests: int) -> list[dict]:
    """/infill bodies for typing `requests` lines from the middle of the file."""
    lines = SOURCE.read_text().splitlines(keepends=True)
    start = len(lines) // 2 - requests // 2
    bodies = []
    for i in range(start, start + requests):
        line = lines[i]
        half = len(line.rstrip("\n")) // 2
        bodies.append({"input_prefix": "".join(lines[:i]) + line[:half], "input_suffix": line[half:] + "".join(lines[i + 1:]),
                       "n_predict": 16, "temperature": 0, "samplers": ["top_k", "top_p", "infill"]})
    return bodies


def replay(client, bodies: list[dict], cache: bool) -> dict:
    ttft, total, prefilled, cached = [], [], [], []
    client.post("/infill", json=bodies[0] | {"cache_prompt": False, "n_predict": 2})  # warm-up
    for body in bodies:
        start = time.perf_counter()
        reply = client.post("/infill", json=body | {"cache_prompt": cache}).json()
        total.append(1000 * (time.perf_counter() - start))
        ttft.append(reply["timings"]["prompt_ms"])
        prefilled.append(reply["timings"]["prompt_n"])
        cached.append(reply["tokens_cached"])
    return {"ttft_p50": np.percentile(ttft, 50), "ttft_p95": np.percentile(ttft, 95), "total_p50": np.percentile(total, 50),
            "total_p95": np.percentile(total, 95), "prefilled": float(np.mean(prefilled)), "cached": float(np.mean(cached)),
            "prompt": float(np.mean([p + c for p, c in zip(prefilled, cached)]))}


def compare(name: str, engine: Engine, requests: int, uncached_requests: int, window: int) -> None:
    from fastapi.testclient import TestClient

    bodies = session(requests)
    with TestClient(create_app(engine, limits=ServeLimits(infill_window=window))) as client:
        with_cache = replay(client, bodies, True)
        without = replay(client, bodies[:uncached_requests], False)
    print(f"\n{name}: {len(bodies)} single-line infills while typing ({uncached_requests} without the cache), "
          f"prompts of {with_cache['prompt']:.0f} tokens on average (window {window})")
    for label, r in (("with cache", with_cache), ("without", without)):
        print(f"  {label:10s}  first token p50 {r['ttft_p50']:8.1f} ms  p95 {r['ttft_p95']:8.1f} ms   last token p50 "
              f"{r['total_p50']:8.1f} ms  p95 {r['total_p95']:8.1f} ms   prefilled {r['prefilled']:7.1f}  cached {r['cached']:7.1f}")
    print(f"  ratio (without / with): first token p50 {without['ttft_p50'] / with_cache['ttft_p50']:.2f}x, "
          f"last token p50 {without['total_p50'] / with_cache['total_p50']:.2f}x, "
          f"tokens prefilled {without['prefilled'] / max(with_cache['prefilled'], 1):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--big-requests", type=int, default=10, help="requests without the cache at 1.3B")
    parser.add_argument("--skip-1.3b", dest="skip_big", action="store_true")
    parser.add_argument("--big-quantize", choices=["none", "int8", "int4"], default="int8")
    parser.add_argument("--window", type=int, default=ServeLimits.infill_window,
                        help="tokens of the file kept around the cursor (the server's --infill-window)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        tok_dir = Path(work) / "tok"
        tok_dir.mkdir()
        tok, facts = tokenizer_lib.from_gguf(SHARED)
        tokenizer_lib.save(tok, tok_dir, eos_token=facts["eos_token"])
        tokenizer = tokenizer_lib.load(tok_dir)
        for preset, dtype, requests, uncached in (("tiny", torch.float32, args.requests, args.requests),
                                                  ("deepseek-coder-1.3b", torch.bfloat16, args.requests, args.big_requests)):
            if preset != "tiny" and args.skip_big:
                continue
            cfg = model_lib.hf_config(model_lib.get_preset(preset).config, tokenizer)
            net = model_lib.build(cfg, seed=0).to(dtype).eval()
            label = f"{preset} ({str(dtype).removeprefix('torch.')}"
            if preset != "tiny" and args.big_quantize != "none":
                quantize.quantize_model(net, {"int8": 8, "int4": 4}[args.big_quantize], None)
                label += f", {args.big_quantize}"
            compare(label + ", random weights)", Engine(net, tokenizer, preset), requests, uncached, args.window)
            del net


if __name__ == "__main__":
    main()
