"""Generation speed: dscoder's engine against `transformers.generate`, and the server's
throughput with concurrent clients against sequential requests.

For each model (a tiny preset and a randomly initialised 1.3B preset in bf16): time to first
token and decode tokens/s for the same prompt and greedy decoding, both engines in the same run;
the memory-bandwidth bound (measured bandwidth / weight bytes read per token). Then, on the tiny
model, 8 concurrent clients against the same 8 requests one after another.

    python bench/bench_generate.py [--prompt-tokens 128] [--new-tokens 64] [--skip-1.3b]

With --quantized, the CPU question instead: a randomly initialised 1.3B model saved in bf16,
quantized by `dscoder model quantize` (int8, int4) and exported by `dscoder model export-gguf`
(f16, q8_0, q4_0); then, each in its own process on the same prompt: transformers bf16, dscoder
bf16 / int8 / int4, and llama.cpp (llama-cpp-python) on the three exports. Time to first token,
decode tokens/s, peak memory, and the ratios.

    python bench/bench_generate.py --quantized [--preset deepseek-coder-1.3b] [--repeats 2]
        [--lengths 128,2000] [--only int8,q8_0] [--work DIR]

--lengths gives the prompt lengths measured (default 128 and 2000 tokens: a short prompt and
an editor's file); --only limits the runs to some kinds; --work keeps the prepared folders in
DIR and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dscoder import model as model_lib
from dscoder import tokenizer as tokenizer_lib
from dscoder.infer.engine import Engine, Sequence
from dscoder.infer.sampling import SamplingParams

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHARED = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "deepseek-coder-vocab"
    / "ggml-vocab-deepseek-coder.gguf"
)


def bandwidth_gb_s() -> float:
    """Memory read bandwidth of a large reduction on the benchmark's device (GB/s)."""
    data = torch.ones(256 * 2**20, dtype=torch.bfloat16, device=DEVICE)
    data.sum()
    _sync()
    start = time.perf_counter()
    for _ in range(5):
        data.sum()
    _sync()
    return 5 * data.numel() * data.element_size() / (time.perf_counter() - start) / 1e9


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def make_model(folder: Path, preset: str, tokenizer_dir: Path, dtype: str):
    tok = tokenizer_lib.load(tokenizer_dir)
    cfg = model_lib.hf_config(model_lib.get_preset(preset).config, tok)
    net = model_lib.build(cfg, seed=0).to(getattr(torch, dtype)).to(DEVICE)
    return net.eval(), tok


def time_ours(engine: Engine, ids: list[int], new_tokens: int) -> tuple[float, float]:
    marks = []
    params = SamplingParams(max_new_tokens=new_tokens, stop_token_ids=(-1,))  # never stop early
    seq = Sequence(ids, params, on_delta=lambda d: marks.append(time.perf_counter()))
    start = time.perf_counter()
    engine.generate([seq])
    _sync()
    end = time.perf_counter()
    first = marks[0] if marks else end
    return first - start, (len(seq.token_ids) - 1) / max(end - first, 1e-9)


def time_transformers(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    from transformers import TextStreamer

    marks = []

    class Clock(TextStreamer):
        def put(self, value):
            marks.append(time.perf_counter())

        def end(self):
            pass

    inputs = torch.tensor([ids], device=DEVICE)
    start = time.perf_counter()
    out = model.generate(
        inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        streamer=Clock(None),
        pad_token_id=0,
    )
    _sync()
    end = time.perf_counter()
    first = marks[1] if len(marks) > 1 else end  # marks[0] is the prompt itself
    generated = out.shape[1] - len(ids)
    return first - start, (generated - 1) / max(end - first, 1e-9)


def compare(name: str, model, tok, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    engine = Engine(model, tok, name, prompt_cache=0)  # the same prompt each run: no reuse, as transformers
    rng = np.random.default_rng(0)
    ids = [tok.bos_token_id] + rng.integers(100, min(len(tok), 30000), prompt_tokens - 1).tolist()
    time_ours(engine, ids, 4), time_transformers(model, ids, 4)  # warm-up
    ours = [time_ours(engine, ids, new_tokens) for _ in range(repeats)]
    theirs = [time_transformers(model, ids, new_tokens) for _ in range(repeats)]
    o_ttft, o_tps = np.median([t for t, _ in ours]), np.median([s for _, s in ours])
    t_ttft, t_tps = np.median([t for t, _ in theirs]), np.median([s for _, s in theirs])
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = bandwidth_gb_s() * 1e9 / weight_bytes
    print(
        f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M parameters, "
        f"{next(model.parameters()).dtype} on {DEVICE}, prompt {prompt_tokens} tokens, {new_tokens} greedy tokens"
    )
    print(f"  transformers.generate  first token {t_ttft * 1000:8.1f} ms   decode {t_tps:8.1f} tok/s")
    print(f"  dscoder engine         first token {o_ttft * 1000:8.1f} ms   decode {o_tps:8.1f} tok/s")
    print(f"  ratio (dscoder / transformers): first token {t_ttft / o_ttft:.2f}x faster, decode {o_tps / t_tps:.2f}x")
    print(
        f"  memory-bandwidth bound: {bound:,.1f} tok/s ({weight_bytes / 1e9:.2f} GB of weights per token); "
        f"dscoder reaches {100 * o_tps / bound:.0f}%"
    )


def server_throughput(model, tok, clients: int, new_tokens: int) -> None:
    try:
        import httpx
        import uvicorn
    except ImportError:
        print("\nserver: skipped (install the serve extra)")
        return

    from dscoder.infer.server import create_app

    engine = Engine(model, tok, "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, max_batch=clients), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/v1/completions"

    def ask(i: int) -> int:
        body = {"prompt": f"def function_{i}(x):\n", "max_tokens": new_tokens, "temperature": 0}
        r = httpx.post(url, json=body, timeout=600).json()
        return r["usage"]["completion_tokens"]

    ask(0)
    start = time.perf_counter()
    sequential = sum(ask(i) for i in range(clients))
    seq_time = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        concurrent = sum(pool.map(ask, range(clients)))
    con_time = time.perf_counter() - start
    server.should_exit = True
    print(f"\nserver, tiny model, {clients} requests of {new_tokens} tokens:")
    print(f"  sequential  {sequential / seq_time:8.1f} tok/s ({seq_time:.2f}s)")
    print(
        f"  concurrent  {concurrent / con_time:8.1f} tok/s ({con_time:.2f}s)   ratio {seq_time / con_time * concurrent / sequential:.2f}x"
    )


# --- --quantized: every engine in its own process --------------------------------------------------

RUNS = [
    ("transformers", "bf16"),
    ("dscoder", "bf16"),
    ("dscoder", "int8"),
    ("dscoder", "int4"),
    ("llama.cpp", "f16"),
    ("llama.cpp", "q8_0"),
    ("llama.cpp", "q4_0"),
]


def prompt_ids(tok, prompt_tokens: int) -> list[int]:
    rng = np.random.default_rng(0)
    return [tok.bos_token_id] + rng.integers(100, min(len(tok), 30000), prompt_tokens - 1).tolist()


def time_llama_cpp(llm, ids: list[int], new_tokens: int) -> tuple[float, float]:
    marks = []
    llm.reset()  # no reuse of the previous run's prompt: the prompt is evaluated each time
    start = time.perf_counter()
    for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        marks.append(time.perf_counter())
        if len(marks) == new_tokens:
            break
    return marks[0] - start, (len(marks) - 1) / max(marks[-1] - marks[0], 1e-9)


def one_run(engine: str, kind: str, path: Path, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    """Load one engine, warm it up, time it; the process's peak memory comes with the figures."""
    from dscoder import model as model_lib

    start = time.perf_counter()
    if engine == "llama.cpp":
        import os

        from llama_cpp import Llama

        llm = Llama(
            model_path=str(path),
            n_ctx=prompt_tokens + new_tokens + 16,
            n_batch=prompt_tokens,
            n_threads=os.cpu_count(),
            verbose=False,
        )
        tok = tokenizer_lib.load(path.parent / "bf16")

        def timed(n):
            return time_llama_cpp(llm, prompt_ids(tok, prompt_tokens), n)
    elif engine == "transformers":
        model, tok = model_lib.load(path, dtype="bfloat16")

        def timed(n):
            return time_transformers(model, prompt_ids(tok, prompt_tokens), n)
    else:
        ours = Engine.load(path, dtype="bfloat16", device="cpu")
        ours.prompt_cache = None  # the same prompt each run: every run prefills, as the other engines do
        tok = ours.tokenizer

        def timed(n):
            return time_ours(ours, prompt_ids(tok, prompt_tokens), n)

    loaded = time.perf_counter() - start
    timed(4)  # warm-up
    runs = [timed(new_tokens) for _ in range(repeats)]
    return {
        "load_s": loaded,
        "ttft_s": float(np.median([t for t, _ in runs])),
        "tok_s": float(np.median([r for _, r in runs])),
        "peak_rss_gb": peak_rss_gb(),
    }


def peak_rss_gb() -> float:
    """This process's peak resident memory since it started (VmHWM; ru_maxrss would include the
    parent's memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def prepare_quantized(work: Path, preset: str, tok_dir: Path) -> dict[tuple[str, str], Path]:
    """The bf16 folder, its int8/int4 folders and its three GGUF files."""
    from dscoder import export, quantize
    from dscoder import model as model_lib

    paths = {}
    net, tok = make_model(work, preset, tok_dir, "bfloat16")
    model_lib.save(work / "bf16", net.config, tok_dir, net.cpu())
    paths["transformers", "bf16"] = paths["dscoder", "bf16"] = work / "bf16"
    for bits in (8, 4):
        quantize.quantize_model(net, bits, None)
        model_lib.save(work / f"int{bits}", net.config, tok_dir, net)
        paths["dscoder", f"int{bits}"] = work / f"int{bits}"
        del net
        net, _ = model_lib.load(work / "bf16")
    del net
    for kind in ("f16", "q8_0", "q4_0"):
        export.export(work / "bf16", work / f"{kind}.gguf", kind)
        paths["llama.cpp", kind] = work / f"{kind}.gguf"
    return paths


def quantized_report(args, tok_dir: Path, work: Path) -> None:
    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
        print("llama.cpp: skipped (pip install llama-cpp-python compiles it)")
    if (work / "q4_0.gguf").is_file():  # prepared by an earlier run with this --work
        paths = {
            (e, k): work / ("bf16" if e == "transformers" else k if e == "dscoder" else f"{k}.gguf") for e, k in RUNS
        }
    else:
        print(f"preparing {args.preset}: bf16 folder, int8 and int4 folders, GGUF f16 / q8_0 / q4_0 ...", flush=True)
        paths = prepare_quantized(work, args.preset, tok_dir)
    for length in args.lengths:
        print(f"\nprompt {length} tokens", flush=True)
        report_length(args, paths, length, have_llama)


def report_length(args, paths: dict, length: int, have_llama: bool) -> None:
    import json
    import subprocess
    import sys

    results = {}
    for engine, kind in RUNS:
        if engine == "llama.cpp" and not have_llama or args.only and kind not in args.only:
            continue
        command = [
            sys.executable,
            __file__,
            "--one",
            engine,
            kind,
            str(paths[engine, kind]),
            "--prompt-tokens",
            str(length),
            "--new-tokens",
            str(args.new_tokens),
            "--repeats",
            str(args.repeats),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{engine} {kind}: failed\n{done.stderr[-2000:]}")
            continue
        results[engine, kind] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[engine, kind]
        print(
            f"  {engine:12s} {kind:5s}  first token {1000 * r['ttft_s']:8.1f} ms  decode {r['tok_s']:6.2f} tok/s  "
            f"peak {r['peak_rss_gb']:5.2f} GB  (load {r['load_s']:.1f} s)",
            flush=True,
        )
    base = results.get(("transformers", "bf16"))
    print(
        f"\n{args.preset}, random weights, prompt {length} tokens, {args.new_tokens} greedy tokens, "
        f"{torch.get_num_threads()} threads"
    )
    for key, r in results.items():
        ratio = f"decode {r['tok_s'] / base['tok_s']:.2f}x transformers bf16" if base else ""
        print(f"  {key[0]:12s} {key[1]:5s}  {ratio}")
    pairs = [
        (("dscoder", "int8"), ("llama.cpp", "q8_0")),
        (("dscoder", "int4"), ("llama.cpp", "q4_0")),
        (("dscoder", "bf16"), ("llama.cpp", "f16")),
    ]
    for ours, theirs in pairs:
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            print(
                f"  dscoder {ours[1]} / llama.cpp {theirs[1]}: decode {a['tok_s'] / b['tok_s']:.2f}x, "
                f"first token {a['ttft_s'] / b['ttft_s']:.2f}x the time, peak memory {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x"
            )


def lengths(text: str) -> list[int]:
    """--lengths: positive whole numbers, comma-separated."""
    try:
        found = [int(n) for n in text.split(",")]
    except ValueError:
        found = []
    if not found or min(found) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected prompt lengths of at least 2 tokens, e.g. 128,2000")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-1.3b", dest="skip_big", action="store_true", help="only the tiny preset")
    parser.add_argument("--quantized", action="store_true", help="int8/int4 and llama.cpp on the CPU (see above)")
    parser.add_argument("--preset", default="deepseek-coder-1.3b", help="model size for --quantized")
    parser.add_argument(
        "--lengths", type=lengths, default=[128, 2000], help="prompt lengths for --quantized (comma-separated)"
    )
    parser.add_argument("--only", default="", help="kinds to run for --quantized (comma-separated: bf16,int8,q8_0...)")
    parser.add_argument("--work", help="keep the prepared folders here and reuse them (--quantized)")
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.only = [k for k in args.only.split(",") if k]
    torch.manual_seed(0)
    if args.one:
        import json

        engine, kind, path = args.one
        print(json.dumps(one_run(engine, kind, Path(path), args.prompt_tokens, args.new_tokens, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as work:
        if args.work:
            work = args.work
            Path(work).mkdir(parents=True, exist_ok=True)
        if (Path(work) / "tok").is_dir():
            tok_dir = Path(work) / "tok"
        elif SHARED.is_file():
            tok_dir = Path(work) / "tok"
            tok_dir.mkdir()
            tok, facts = tokenizer_lib.from_gguf(SHARED)
            tokenizer_lib.save(tok, tok_dir, eos_token=facts["eos_token"])
        else:  # the released vocabulary is not here: a small trained one
            from collections import Counter

            from dscoder.data.installed import installed_python_roots
            from dscoder.texts import read_texts

            tok_dir = Path(work) / "tok"
            tok_dir.mkdir()
            tokenizer_lib.save(
                tokenizer_lib.train(
                    read_texts(installed_python_roots()[:1], Counter(), 4_000_000), 8000, show_progress=False
                ),
                tok_dir,
            )
        if args.quantized:
            quantized_report(args, tok_dir, Path(work))
            return
        tiny, tok = make_model(Path(work), "tiny", tok_dir, "float32")
        compare("tiny", tiny, tok, args.prompt_tokens, args.new_tokens, args.repeats)
        if not args.skip_big:
            big, tok = make_model(Path(work), "deepseek-coder-1.3b", tok_dir, "bfloat16")
            compare("deepseek-coder-1.3b (random weights)", big, tok, args.prompt_tokens, args.new_tokens, args.repeats)
            del big
        server_throughput(tiny, tok, 8, args.new_tokens)


if __name__ == "__main__":
    main()
