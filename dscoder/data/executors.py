"""Executors: run the same unit function over units of work, in local processes or on Ray.

Units write their own outputs and skip themselves when already done, so any executor can be
stopped and restarted, and all of them produce the same files.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Callable, Sequence

from dscoder.console import progress
from dscoder.errors import UserError


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_local(fn: Callable, units: Sequence[dict], args: tuple, workers: int, desc: str) -> None:
    """`fn(unit, *args)` for every unit: inline with one worker, else in spawned processes."""
    bar = progress(total=len(units), desc=desc, unit=" units")
    try:
        if workers <= 1 or len(units) <= 1:
            for unit in units:
                fn(unit, *args)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(fn, unit, *args) for unit in units]
            for future in as_completed(futures):
                future.result()  # re-raises a worker's error; finished units stay on disk
                bar.update()
    finally:
        bar.close()


def run_ray(fn: Callable, units: Sequence[dict], args: tuple, workers: int, desc: str, address: str | None) -> None:
    """The same on Ray: a local cluster by default, or the one at `address`. The output folder
    must be reachable from every node (a shared filesystem)."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'dscoder[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        options = {"address": address} if address else {"num_cpus": workers}
        ray.init(log_to_driver=False, include_dashboard=False, **options)
    try:
        remote = ray.remote(fn)
        pending = [remote.remote(unit, *args) for unit in units]
        with progress(total=len(units), desc=desc, unit=" units") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
                bar.update(len(done))
    finally:
        if started_here:
            ray.shutdown()
