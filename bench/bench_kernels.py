"""Decode-step kernels: dscoder's own (dscoder/kernels) against torch's, on the shapes of one
1.3B decode step (24 layers: q, k, v, o 2048x2048; gate, up 5504x2048; down 2048x5504; 16 heads
of 128).

For each: the time of the 24 layers' worth of calls, the bytes read per second, and the ratio.
int8: ours (activations quantized inside) against torch._int_mm and _weight_int8pack_mm, each
with its own quantization; int4: ours (activations int8 in blocks of 32) against torch's
weight-only int4 kernel; bf16: ours against F.linear; attention of one query over a bfloat16
KV cache at --context tokens: ours against scaled_dot_product_attention.

    python bench/bench_kernels.py [--context 2000] [--rows 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dscoder import kernels, quantize

SHAPES = [(2048, 2048)] * 4 + [(5504, 2048)] * 2 + [(2048, 5504)]  # (out, in) of one block
LAYERS = 24


def best_of(repeats: int, run) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, ours: float, theirs: dict[str, float], nbytes: int) -> None:
    print(f"{name}: dscoder {1000 * ours:.1f} ms ({nbytes / ours / 1e9:.1f} GB/s)")
    for peer, seconds in theirs.items():
        print(
            f"  {peer}: {1000 * seconds:.1f} ms ({nbytes / seconds / 1e9:.1f} GB/s); dscoder is {seconds / ours:.2f}x as fast"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1, help="sequences decoded together (at most 8)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if kernels.library() is None:
        raise SystemExit(f"dscoder's kernels are not available here: {kernels.status()}")
    print(f"kernels: {kernels.status()}; {torch.get_num_threads()} threads; {args.rows} row(s)")
    generator = torch.Generator().manual_seed(0)

    layers = []
    for _ in range(LAYERS):  # distinct weights: every call reads from memory, as a real step does
        for out, inner in SHAPES:
            qweight, scales = quantize.quantize_weight(torch.randn(out, inner, generator=generator), 8, None)
            layers.append((qweight, scales, kernels.row_sums(qweight), scales.bfloat16()))
    inputs = {inner: torch.randn(args.rows, inner, generator=generator).bfloat16() for _, inner in SHAPES}
    nbytes = sum(q.numel() for q, *_ in layers)

    def ours():
        for q, s, sums, _ in layers:
            kernels.int8_matvec(inputs[q.shape[1]], q, s, sums)

    def int_mm():
        for q, s, _, _ in layers:
            quantize._int8_product(inputs[q.shape[1]], q, s).bfloat16()

    def int8pack():
        for q, _, _, s16 in layers:
            torch.ops.aten._weight_int8pack_mm(inputs[q.shape[1]], q, s16)

    report(
        "int8 weights, one decode step",
        best_of(args.repeats, ours),
        {"torch._int_mm": best_of(args.repeats, int_mm), "torch _weight_int8pack_mm": best_of(args.repeats, int8pack)},
        nbytes,
    )
    layers.clear()  # free the weights before the next measure

    packed = []
    for _ in range(LAYERS):
        for out, inner in SHAPES:
            qweight, scales = quantize.quantize_weight(torch.randn(out, inner, generator=generator), 4, 32)
            packed.append((qweight, scales, quantize._layout(qweight, scales, 4, 32, torch.bfloat16)))
    report(
        "int4 weights (groups of 32), one decode step",
        best_of(args.repeats, lambda: [kernels.int4_matvec(inputs[q.shape[1] * 2], q, s, 32) for q, s, _ in packed]),
        {
            "torch _weight_int4pack_mm_for_cpu": best_of(
                args.repeats,
                lambda: [
                    torch.ops.aten._weight_int4pack_mm_for_cpu(inputs[q.shape[1] * 2], *layout)
                    for q, _, layout in packed
                ],
            )
        },
        sum(q.numel() for q, *_ in packed),
    )
    packed.clear()

    dense = [torch.randn(out, inner, generator=generator).bfloat16() for _ in range(LAYERS) for out, inner in SHAPES]
    report(
        "bfloat16 weights, one decode step",
        best_of(args.repeats, lambda: [kernels.bf16_matvec(inputs[w.shape[1]], w) for w in dense]),
        {"F.linear": best_of(args.repeats, lambda: [F.linear(inputs[w.shape[1]], w) for w in dense])},
        sum(2 * w.numel() for w in dense),
    )
    dense.clear()

    heads, dim, capacity = 16, 128, args.context + 64
    caches = [
        (
            torch.randn(heads, capacity, dim, generator=generator).bfloat16(),
            torch.randn(heads, capacity, dim, generator=generator).bfloat16(),
        )
        for _ in range(LAYERS)
    ]
    q = torch.randn(heads, dim, generator=generator)
    q16 = q.bfloat16()[None, :, None]

    def attend_ours():
        for k, v in caches:
            kernels.attend_bf16(q[None], k, v, args.context - 1, 1).bfloat16()

    def attend_torch():
        for k, v in caches:
            F.scaled_dot_product_attention(q16, k[None, :, : args.context], v[None, :, : args.context])

    report(
        f"attention of one token over {args.context} cached tokens, {LAYERS} layers",
        best_of(args.repeats, attend_ours),
        {"scaled_dot_product_attention": best_of(args.repeats, attend_torch)},
        LAYERS * 2 * heads * args.context * dim * 2,
    )


if __name__ == "__main__":
    main()
