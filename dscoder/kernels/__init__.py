"""Small CPU kernels of our own for decode steps, compiled on first use with the machine's C compiler.

`int8_matvec.c` multiplies a few rows of activations with int8 or bfloat16 weights at about the
memory bandwidth, and attends one new token over a bfloat16 KV cache (bench/bench_kernels.py
compares each with torch's kernels; at a 2,000-token context torch's attention for one query
took about 4 ms a layer on a 2-core CPU). It is built once per machine (`-march=native`; the cache key holds the source, the compiler, the
flags and the CPU's features) into `$DSCODER_CACHE` (default `~/.cache/dscoder`)/kernels,
loaded with ctypes, and checked against torch's product before it is used: its int8 results are
bit-identical to `torch._int_mm` followed by the same scalings, so which of the two computes a
row never changes an output. Where no compiler works, or `DSCODER_KERNELS=off`, torch's
kernels run instead; `status()` says which.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import torch

from dscoder.errors import UserError

log = logging.getLogger("dscoder")
SOURCE = Path(__file__).with_name("int8_matvec.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_status = "not loaded"


def cache_dir() -> Path:
    return Path(os.environ.get("DSCODER_CACHE") or Path.home() / ".cache" / "dscoder") / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if name and shutil.which(name.split()[0]):
            return name.split()[0]
    return None


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _build(compiler: str, flags: list[str] = FLAGS) -> Path:
    """The compiled library, from the cache when this source was built here before."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, version, *flags, _cpu_features()]).encode())
    target = cache_dir() / f"int8_matvec-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, "-o", str(built), str(SOURCE)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed")
        os.replace(built, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (torch's kernels are used; `status()` says why)."""
    global _status
    setting = os.environ.get("DSCODER_KERNELS", "auto")
    if setting not in ("auto", "off"):
        raise UserError(f"DSCODER_KERNELS={setting}: expected auto (the default) or off")
    if setting == "off":
        _status = "off (DSCODER_KERNELS=off)"
        return None
    compiler = _compiler()
    if compiler is None:
        _status = "no C compiler found (torch's kernels are used)"
        return None
    try:
        path = _build(compiler)
        try:
            lib = bind(ctypes.CDLL(str(path)))
        except OSError:  # a damaged file in the cache (a full disk, a copy cut short): build it again
            path.unlink(missing_ok=True)
            lib = bind(ctypes.CDLL(str(_build(compiler))))
    except (OSError, subprocess.SubprocessError) as exc:
        _status = f"could not be built ({exc}); torch's kernels are used"
        log.warning("dscoder kernels: %s", _status)
        return None
    _status = "built with VNNI" if lib.dscoder_has_vnni() else "built without VNNI (plain loops)"
    return lib


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the library's functions' arguments to ctypes."""
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.dscoder_int8_matvec.argtypes = [
        pointer,
        ctypes.c_int,
        size,
        pointer,
        pointer,
        pointer,
        size,
        size,
        pointer,
        ctypes.c_int,
    ]
    lib.dscoder_int8_matvec.restype = None
    lib.dscoder_row_sums.argtypes = [pointer, size, size, pointer]
    lib.dscoder_row_sums.restype = None
    lib.dscoder_attend_bf16.argtypes = [
        pointer,
        pointer,
        pointer,
        size,
        size,
        size,
        size,
        size,
        size,
        ctypes.c_float,
        pointer,
        ctypes.c_int,
    ]
    lib.dscoder_attend_bf16.restype = None
    lib.dscoder_bf16_matvec.argtypes = [pointer, size, pointer, size, size, pointer, ctypes.c_int]
    lib.dscoder_bf16_matvec.restype = None
    return lib


def status() -> str:
    library()
    return _status


def max_rows() -> int:
    lib = library()
    return lib.dscoder_max_rows() if lib is not None else 0


def row_sums(qweight: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """sum over inputs of each output channel's int8 weights: (out,) int32."""
    out, inner = qweight.shape
    sums = torch.empty(out, dtype=torch.int32)
    (lib or library()).dscoder_row_sums(qweight.data_ptr(), out, inner, sums.data_ptr())
    return sums


def int8_matvec(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, sums: torch.Tensor, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    """x (rows <= max_rows(), in) float32 or bfloat16, contiguous, times the int8 weight (out, in)
    with `scales` (out,) float32: (rows, out) in x's dtype, equal to quantize._int8_product."""
    rows, inner = x.shape
    out = qweight.shape[0]
    y = torch.empty((rows, out), dtype=x.dtype)
    (lib or library()).dscoder_int8_matvec(
        x.data_ptr(),
        int(x.dtype == torch.bfloat16),
        rows,
        qweight.data_ptr(),
        scales.data_ptr(),
        sums.data_ptr(),
        out,
        inner,
        y.data_ptr(),
        torch.get_num_threads(),
    )
    return y


def attend_bf16(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, group: int, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    """Causal attention of new tokens at positions start.., q (rows, heads, dim) float32, over one
    sequence's cache, keys and values (kv_heads, capacity, dim) bfloat16 and contiguous, whose
    first start + rows positions are written (the new tokens' own included); `group` query heads
    share a kv head. Returns (rows, heads, dim) float32. A token's numbers do not depend on
    `rows` or `start`: one decode step and a prompt in chunks give the same (the C source says how)."""
    rows, heads, dim = q.shape
    q = q.contiguous()
    out = torch.empty((rows, heads, dim), dtype=torch.float32)
    (lib or library()).dscoder_attend_bf16(
        q.data_ptr(),
        keys.data_ptr(),
        values.data_ptr(),
        keys.shape[1] * dim,
        heads,
        group,
        rows,
        start,
        dim,
        dim**-0.5,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def bf16_matvec(x: torch.Tensor, weight: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """x (rows, in) times weight (out, in), both bfloat16 and contiguous: (rows, out) bfloat16."""
    rows, inner = x.shape
    out = weight.shape[0]
    y = torch.empty((rows, out), dtype=torch.bfloat16)
    (lib or library()).dscoder_bf16_matvec(
        x.data_ptr(), rows, weight.data_ptr(), out, inner, y.data_ptr(), torch.get_num_threads()
    )
    return y
