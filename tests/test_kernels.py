"""Our int8 decode kernel: the same numbers as torch's integer product, built or not."""

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from dscoder import kernels, quantize

needs_kernels = pytest.mark.skipif(kernels.library() is None, reason=f"kernels not built: {kernels.status()}")


def test_where_the_compiler_works_the_kernels_build(tmp_path):
    """A build failure of our own source is a failure here, not a silent fallback."""
    compiler = kernels._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    probe = tmp_path / "probe.c"
    probe.write_text(
        "#include <math.h>\nint f(float *x, int n) { int s = 0;\n#pragma omp parallel for\n"
        "for (int i = 0; i < n; i++) x[i] = nearbyintf(x[i]);\nreturn s; }\n"
    )
    done = subprocess.run([compiler, *kernels.FLAGS, "-o", str(tmp_path / "probe.so"), str(probe)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"the C compiler cannot build a shared OpenMP library here: {done.stderr.decode()[-200:]}")
    assert kernels.status().startswith("built"), kernels.status()


def cases(dtype):
    generator = torch.Generator().manual_seed(1)
    for inner, out in ((200, 70), (2048, 96), (64, 5), (5504, 33)):  # widths off and on 64-byte vectors
        w = torch.randn(out, inner, generator=generator)
        qweight, scales = quantize.quantize_weight(w, 8, None)
        for rows in (1, 2, 5, kernels.max_rows() or 8):
            x = torch.randn(rows, inner, generator=generator) * torch.rand(1, inner, generator=generator) * 30
            x[0, 3] = 0.0 if rows % 2 else 400.0  # an outlier (or nothing) in one channel
            yield x.to(dtype), qweight, scales


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_equals_torchs_integer_product_bit_for_bit(dtype):
    for x, qweight, scales in cases(dtype):
        got = kernels.int8_matvec(x, qweight, scales, kernels.row_sums(qweight))
        assert got.dtype == dtype and torch.equal(got, quantize._int8_product(x, qweight, scales).to(dtype))


@needs_kernels
def test_the_plain_loop_build_without_vnni_gives_the_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("DSCODER_CACHE", str(tmp_path))
    path = kernels._build(kernels._compiler(), ["-O2", "-march=x86-64", "-fopenmp", "-shared", "-fPIC"])
    plain = kernels.bind(ctypes.CDLL(str(path)))
    assert plain.dscoder_has_vnni() == 0
    for x, qweight, scales in cases(torch.float32):
        got = kernels.int8_matvec(x, qweight, scales, kernels.row_sums(qweight, plain), lib=plain)
        assert torch.equal(got, quantize._int8_product(x, qweight, scales))


@needs_kernels
def test_a_second_build_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSCODER_CACHE", str(tmp_path))
    first = kernels._build(kernels._compiler())
    stamp = first.stat().st_mtime_ns
    assert kernels._build(kernels._compiler()) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [first.name]  # no temporary left behind


@pytest.mark.parametrize("setting", ["no compiler", "off"])
def test_without_the_kernel_torchs_product_runs_and_says_so(tmp_path, setting):
    env = {**os.environ, "DSCODER_CACHE": str(tmp_path)}
    if setting == "off":
        env["DSCODER_KERNELS"] = "off"
    else:
        env["PATH"], env["CC"] = str(tmp_path), ""  # no compiler to be found
    code = (
        "import torch\nfrom dscoder import kernels, quantize\n"
        "q, s = quantize.quantize_weight(torch.randn(8, 64), 8, None)\n"
        "layer = quantize.QuantLinear(q, s, 8, None, torch.float32)\n"
        "x = torch.randn(1, 64)\n"
        "assert torch.equal(layer(x), quantize._int8_product(x, q, s))\n"
        "print(kernels.status(), layer.kernel)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("off" if setting == "off" else "no C compiler") in done.stdout and "int8 x int8" in done.stdout
    assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())


@needs_kernels
def test_bf16_products_and_attention_agree_with_torch():
    generator = torch.Generator().manual_seed(2)
    for rows, inner, out in ((1, 2048, 96), (3, 200, 17), (8, 64, 5)):
        x = torch.randn(rows, inner, generator=generator).bfloat16()
        w = torch.randn(out, inner, generator=generator).bfloat16()
        expected = x.float() @ w.float().t()
        assert torch.allclose(
            kernels.bf16_matvec(x, w).float(), expected, rtol=0.02, atol=0.02 * float(expected.abs().max())
        )
    for heads, kv_heads, length, rows in ((4, 4, 1, 1), (8, 2, 37, 1), (2, 1, 300, 1), (4, 2, 70, 40), (2, 2, 33, 33)):
        capacity, dim = length + 10, 32
        k = torch.randn(kv_heads, capacity, dim, generator=generator).bfloat16()
        v = torch.randn(kv_heads, capacity, dim, generator=generator).bfloat16()
        q = torch.randn(rows, heads, dim, generator=generator).bfloat16().float()
        group, start = heads // kv_heads, length - rows
        mask = torch.arange(length) <= torch.arange(start, length)[:, None]
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k[None, :, :length].float().repeat_interleave(group, 1),
            v[None, :, :length].float().repeat_interleave(group, 1),
            attn_mask=mask,
        )[0].transpose(0, 1)
        ours = kernels.attend_bf16(q, k, v, start, group)
        assert torch.allclose(ours, expected, atol=1e-4)
        # each token's numbers are the same computed alone, in another chunk, or with the others
        for cut in (0, rows // 3, rows - 1):
            alone = kernels.attend_bf16(q[cut : cut + 1], k, v, start + cut, group)
            assert torch.equal(alone[0], ours[cut])
            assert torch.equal(kernels.attend_bf16(q[cut:], k, v, start + cut, group), ours[cut:])


@needs_kernels
def test_a_damaged_cached_library_is_built_again(tmp_path):
    env = {**os.environ, "DSCODER_CACHE": str(tmp_path)}
    code = "from dscoder import kernels\nprint(kernels.status())"
    assert (
        "built"
        in subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    )
    [cached] = (tmp_path / "kernels").iterdir()
    cached.write_bytes(b"not a library")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("built with") and cached.read_bytes()[:4] == b"\x7fELF", done.stderr


def test_a_wrong_kernels_setting_is_one_line(tiny_base_model):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dscoder",
            "complete",
            "--model",
            str(tiny_base_model),
            "--quantize",
            "int8",
            "def f",
            "--max-new-tokens",
            "2",
        ],
        env={**os.environ, "DSCODER_KERNELS": "maybe"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "DSCODER_KERNELS=maybe: expected auto (the default) or off" in done.stderr
    assert "Traceback" not in done.stderr
