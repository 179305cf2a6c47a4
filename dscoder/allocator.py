"""The C allocator's settings for torch work on the CPU.

glibc's malloc serves blocks above a (dynamic, at most 32 MiB) threshold with fresh `mmap`s and
gives freed memory back to the system. A training step frees and reallocates the same large
tensors (activations, logits, gradients) every step, so each step page-faults all of them in
again: on 2 CPU cores the tiny preset spent a quarter of its time in the kernel and ran at
10,600 tokens/s, against 17,600 with freed blocks kept in the process (300 steps of the
quickstart corpus, 24M minor page faults against 0.2M; peak memory 850 against 980 MB).
`bench/bench_train.py` measures it (its "glibc malloc defaults" row).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger("dscoder")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
KEEP_BYTES = 2**30
DISABLE_ENV = "DSCODER_KEEP_FREED_MEMORY"


@functools.cache
def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep up to 1 GiB of freed memory for reuse, where the
    C library is glibc (a no-op elsewhere, or with DSCODER_KEEP_FREED_MEMORY=0). Returns whether
    the settings took. Call before the work allocates; it affects the whole process, once."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library
    except (OSError, TypeError):  # no dlopen(NULL), as on Windows
        return False
    took = (
        mallopt is not None
        and bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES))
        and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    )
    log.debug("allocator: keep freed memory %s", "on" if took else "unavailable")
    return took
