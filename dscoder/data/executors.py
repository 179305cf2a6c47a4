"""Executors: run the same unit function over units of work, in local processes or on Ray.

Units write their own outputs and skip themselves when already done, so any executor can be
stopped and restarted, and all of them produce the same files.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Callable, Sequence

from dscoder.console import progress
from dscoder.errors import UserError


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_local(fn: Callable, units: Sequence, args: tuple, workers: int, desc: str) -> list:
    """`fn(unit, *args)` for every unit, inline with one worker, else in spawned processes (even
    for a single task, so that the driver's memory stays its own); their results in unit order."""
    bar = progress(total=len(units), desc=desc, unit=" tasks")
    results: list = [None] * len(units)
    try:
        if workers <= 1:
            for number, unit in enumerate(units):
                results[number] = fn(unit, *args)
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, unit, *args): number for number, unit in enumerate(units)}
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()  # re-raises a worker's error
                except BrokenProcessPool:
                    raise UserError(
                        f"{desc}: a worker process died (killed, or out of memory); the finished "
                        "tasks are kept: run the same command again to resume"
                    ) from None
                bar.update()
        return results
    finally:
        bar.close()


def run_ray(fn: Callable, units: Sequence, args: tuple, workers: int, desc: str, address: str | None) -> list:
    """The same on Ray: a local cluster by default, or the one at `address`. The output folder
    must be reachable from every node (a shared filesystem). A task whose worker dies (a killed
    process, a lost node) is run again, up to 3 times; an error inside a task is not."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'dscoder[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        # without an address, an instance of its own ("local"): Ray would otherwise join a cluster
        # that `ray start` left running on this machine
        options = {"address": address} if address else {"address": "local", "num_cpus": workers}
        try:
            ray.init(log_to_driver=False, include_dashboard=False, **options)
        except ConnectionError as exc:
            raise UserError(f"--ray-address {address}: cannot connect ({exc})") from None
    try:
        remote = ray.remote(max_retries=3, retry_exceptions=False)(fn)
        refs = [remote.remote(unit, *args) for unit in units]
        number = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(units)
        pending = list(refs)
        with progress(total=len(units), desc=desc, unit=" tasks") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    results[number[done[0]]] = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, UserError):
                        raise UserError(str(exc.cause)) from None
                    raise
                except ray.exceptions.RayError as exc:  # a worker or node lost more often than retried
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise UserError(
                        f"{desc}: a task failed 4 times ({first}); the finished tasks are kept: "
                        "run the same command again to resume"
                    ) from None
                bar.update(len(done))
        return results
    finally:
        if started_here:
            ray.shutdown()


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB. On Linux from /proc (VmHWM): the
    rusage figure carries over the peak of the process that forked this one, so a worker or a
    command started from a large process would report that process's memory."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


class Executor:
    """Runs the stages of one build on the chosen engine, timing each: `executor(stage, fn,
    items, args)` is `[fn(item, *args) for item in items]`, where each task returns its peak
    memory in MB."""

    def __init__(self, engine: str, workers: int, address: str | None, report: list | None = None):
        self.engine, self.workers, self.address = engine, workers, address
        self.report = report if report is not None else []

    def __call__(self, stage: str, fn: Callable, items: Sequence, args: tuple) -> None:
        import logging
        import time

        start = time.perf_counter()
        if self.engine == "ray":
            peaks = run_ray(fn, items, args, self.workers, stage, self.address)
        else:
            peaks = run_local(fn, items, args, self.workers, stage)
        figures = {
            "stage": stage,
            "tasks": len(items),
            "seconds": round(time.perf_counter() - start, 2),
            "driver_peak_mb": round(peak_memory_mb(), 1),
            "task_peak_mb": round(max(peaks, default=0.0), 1),
        }
        self.report.append(figures)
        logging.getLogger("dscoder").info(
            "%(stage)s: %(tasks)d tasks in %(seconds).1f s; peak memory: driver "
            "%(driver_peak_mb).0f MB, largest task %(task_peak_mb).0f MB",
            figures,
        )
