"""Weight quantization: int8 per output channel, int4 in groups.

Decoding one token reads every weight once, so on a CPU its speed is set by the bytes of
weights: int8 halves them and int4 quarters them. The weights are quantized once, without
calibration data. On a CPU (see `QuantLinear`) prompts run on torch's kernels: int8 x int8 with
each token's activations quantized on the fly (`torch._int_mm`), and the weight-only
`_weight_int4pack_mm_for_cpu` for int4; int8 decode steps (up to 8 tokens) on dscoder's own
kernel (dscoder/kernels), with the same arithmetic as `_int_mm` (bit-identical results).

A quantized model folder is a model folder whose config.json carries
`quantization_config = {"quant_method": "dscoder", "bits": 8|4, "group_size": G|null,
"lm_head_bits": 8}` and whose safetensors hold, for every quantized linear layer `NAME`:

    NAME.qweight   int8 (out, in)             bits 8: round(w / scale), in [-127, 127]
                   uint8 (out, in / 2)        bits 4: q + 8 in [0, 15], two per byte, the even
                                              column in the low nibble
    NAME.scales    float32 (out,)             bits 8: per output channel, max |w| / 127
                   float32 (out, in / G)      bits 4: per group of G inputs, m / -8 for the
                                              group's largest-magnitude weight m (as q4_0)

Every other tensor (embeddings, norms) is stored as it was. The layers quantized are the seven
projections of each block, and the output head (at int8 in an int4 model: the head's errors
reach every logit, as llama.cpp's Q4_K_M keeps its output at 6 bits). Other loaders meet
`qweight` names they do not know and stop, rather than reading the integers as weights.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from dscoder import kernels
from dscoder.errors import UserError

log = logging.getLogger("dscoder")

METHOD = "dscoder"
BITS = (8, 4)
GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32
LM_HEAD_BITS = 8
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def settings(bits: int, group_size: int | None) -> dict:
    """The `quantization_config` recorded in config.json."""
    return {
        "quant_method": METHOD,
        "bits": bits,
        "group_size": group_size if bits == 4 else None,
        "lm_head_bits": LM_HEAD_BITS,
    }


def of_config(hf_cfg) -> dict | None:
    """A folder's quantization settings, None for a dense model; a UserError for a quantization
    made by another tool (its loader is needed, not ours)."""
    found = getattr(hf_cfg, "quantization_config", None)
    if not found:
        return None
    found = found if isinstance(found, dict) else found.to_dict()
    if found.get("quant_method") != METHOD:
        raise UserError(
            f"the model is quantized with {found.get('quant_method')!r}, which dscoder cannot load "
            "(use the original weights, then `dscoder model quantize`)"
        )
    return found


def check(bits: int, group_size: int | None, hf_cfg) -> int | None:
    """The group size to use (None for int8); a UserError naming the flag when it cannot work."""
    if bits not in BITS:
        raise UserError(f"--bits {bits}: expected 8 or 4")
    if bits == 8:
        if group_size is not None:
            raise UserError("--group-size: only for --bits 4 (int8 has one scale per output channel)")
        return None
    group_size = group_size or DEFAULT_GROUP_SIZE
    if group_size not in GROUP_SIZES:
        raise UserError(f"--group-size {group_size}: expected one of {', '.join(map(str, GROUP_SIZES))}")
    for name, width in (("hidden_size", hf_cfg.hidden_size), ("intermediate_size", hf_cfg.intermediate_size)):
        if width % group_size:
            raise UserError(f"--group-size {group_size}: does not divide the model's {name} {width}")
    return group_size


def targets(model) -> dict[str, nn.Linear]:
    """The linear layers that are quantized, by their names in the state dict."""
    found = {}
    for i, layer in enumerate(model.model.layers):
        for name in PROJECTIONS:
            found[f"model.layers.{i}.{name}"] = layer.get_submodule(name)
    found["lm_head"] = model.lm_head
    return found


def layer_bits(name: str, bits: int) -> int:
    return LM_HEAD_BITS if name == "lm_head" else bits


# --- the arithmetic ---------------------------------------------------------------------------------


def quantize_weight(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight, scales) in the stored layout for a weight (out, in)."""
    w = w.detach().float()
    if bits == 8:
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
        return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales
    out, inner = w.shape
    groups = w.reshape(out, inner // group_size, group_size)  # (out, in/G, G)
    largest = groups.gather(-1, groups.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    scales = largest / -8
    scales = torch.where(scales == 0, torch.full_like(scales, 1e-12), scales)  # (out, in/G)
    q = torch.round(groups / scales[..., None]).clamp(-8, 7).to(torch.int32).reshape(out, inner) + 8
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8), scales


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """(out, in/2) uint8 -> (out, in) uint8 values 0..15."""
    return torch.stack([qweight & 0x0F, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight (out, in) a quantized one stands for (the integers are exact in any dtype)."""
    if bits == 8:
        return qweight.to(dtype) * scales.to(dtype)[:, None]
    q = unpack_int4(qweight).to(dtype) - 8
    out, inner = q.shape
    return (q.reshape(out, scales.shape[1], -1) * scales.to(dtype)[..., None]).reshape(out, inner)


# --- the layer ------------------------------------------------------------------------------------------


class QuantLinear(nn.Module):
    """A bias-free linear layer with int8 or int4 weights, computing on torch's kernels.

    int8 on a CPU: each token's activations are quantized to int8 with their own scale (as
    llama.cpp's q8_0 quantizes them, there in blocks of 32), multiplied with the int8 weights by
    torch's integer matrix product (`torch._int_mm`, exact int32 sums), then scaled back. A
    token's result never depends on the other tokens of the call, so batching does not change
    outputs; it is the fastest CPU kernel torch has for prompts. Decode steps (up to 8 rows) run
    on dscoder's kernel (kernels.int8_matvec), whose results are bit-identical. int4, and int8
    on CUDA: torch's weight-only kernels (faster than dequantizing, for prompts too). Where a
    device has no kernel (checked once), every call dequantizes."""

    def __init__(
        self, qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int | None, dtype: torch.dtype
    ):
        super().__init__()
        self.bits, self.group_size, self.dtype = bits, group_size, dtype
        self.out_features = qweight.shape[0]
        self.in_features = qweight.shape[1] * (2 if bits == 4 else 1)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.float())
        self._kernel_args: tuple | None = None
        self._matvec_sums: torch.Tensor | None = None  # for kernels.int8_matvec (decode steps on a CPU)
        self._prepare(qweight.device)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"

    def _prepare(self, device: torch.device) -> None:
        """Lay the weights out for the device's kernel (after the layer moved there)."""
        self._kernel_args, self._matvec_sums = None, None
        if has_kernel(device.type, self.bits, self.dtype):
            self._kernel_args = _layout(self.qweight, self.scales, self.bits, self.group_size, self.dtype)
            if _integer_path(self.bits, device.type) and has_matvec(self.dtype):
                self._matvec_sums = kernels.row_sums(self.qweight.contiguous())

    def _apply(self, fn, recurse=True):  # .to(device) re-lays the kernel's copy of the weights
        result = super()._apply(fn, recurse)
        self._prepare(self.qweight.device)
        return result

    def weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scales, self.bits, self.dtype)

    @property
    def kernel(self) -> str:
        """Which kernel runs this layer (for `model info` and the tests)."""
        if self._kernel_args is None:
            return "dequantized"
        return "int8 x int8" if _integer_path(self.bits, self.qweight.device.type) else f"int{self.bits} weight-only"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if x.requires_grad and torch.is_grad_enabled():  # adapters trained on a frozen quantized base
            return _FrozenProduct.apply(x, self)
        return self.product(x)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        if self._kernel_args is None:
            out = F.linear(flat.to(self.dtype), self.weight())
        elif self._matvec_sums is not None and rows <= kernels.max_rows() and flat.dtype == self.dtype:
            out = kernels.int8_matvec(flat.contiguous(), self.qweight, self.scales, self._matvec_sums)
        elif _integer_path(self.bits, self.qweight.device.type):
            out = _int8_product(flat, self.qweight, self.scales).to(self.dtype)
        else:
            out = _kernel(flat.to(self.dtype), self.bits, self.qweight.device.type, self._kernel_args)
        return out.reshape(*x.shape[:-1], self.out_features)


class _FrozenProduct(torch.autograd.Function):
    """A quantized layer's product that passes gradients to its input (its weights are frozen):
    the backward multiplies by the dequantized weights, so LoRA adapters below it train (QLoRA)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer.product(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.weight().to(grad.dtype), None


def _integer_path(bits: int, device_type: str) -> bool:
    return bits == 8 and device_type == "cpu"


# torch offers its int8 and int4 matrix kernels (CPU and CUDA) only as private aten ops: the
# `noqa: SLF001` below mark those uses.
def _int8_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (rows, in) times the int8 weight (out, in), each row's activations quantized on their
    own: (rows, out) float32."""
    x = x.float()
    x_scales = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127  # (rows, 1)
    xq = torch.round(x / x_scales).to(torch.int8)
    # int32 (rows, out) -> float
    return torch._int_mm(xq, qweight.t()).float() * x_scales * scales  # noqa: SLF001


def _layout(
    qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int | None, dtype: torch.dtype
) -> tuple:
    """The arguments torch's kernel takes after the input, for weights on their device."""
    if bits == 8:
        return qweight, scales.to(dtype)
    q = unpack_int4(qweight)
    if qweight.device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)  # noqa: SLF001
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack(q[:, 0::2] << 4 | q[:, 1::2], 8)  # noqa: SLF001
    scales_and_zeros = torch.stack([scales.t(), torch.zeros_like(scales).t()], dim=-1)  # (in/G, out, 2)
    return packed, group_size, scales_and_zeros.to(dtype).contiguous()


def _kernel(x: torch.Tensor, bits: int, device_type: str, args: tuple) -> torch.Tensor:
    if bits == 8:
        return torch.ops.aten._weight_int8pack_mm(x, *args)  # noqa: SLF001
    if device_type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, *args)  # noqa: SLF001
    return torch.ops.aten._weight_int4pack_mm(x, *args)  # noqa: SLF001


@functools.cache
def has_matvec(dtype: torch.dtype) -> bool:
    """Whether our decode kernel (kernels.int8_matvec) is built here and gives exactly what
    `_int8_product` gives, in `dtype`."""
    if dtype not in (torch.float32, torch.bfloat16) or kernels.library() is None:
        return False
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(70, 200, generator=generator)
    qweight, scales = quantize_weight(w, 8, None)
    sums = kernels.row_sums(qweight)
    for rows in range(1, kernels.max_rows() + 1):
        x = (torch.randn(rows, 200, generator=generator) * torch.rand(1, 200, generator=generator) * 10).to(dtype)
        if not torch.equal(kernels.int8_matvec(x, qweight, scales, sums), _int8_product(x, qweight, scales).to(dtype)):
            log.warning("dscoder kernels: int8_matvec disagrees with torch's product here; not used")
            return False
    return True


@functools.cache
def has_kernel(device_type: str, bits: int, dtype: torch.dtype) -> bool:
    """Whether torch's weight-only kernel runs here and agrees with the dequantized product."""
    generator = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 256, generator=generator), torch.randn(3, 256, generator=generator)
    group = None if bits == 8 else 64
    qweight, scales = (t.to(device_type) for t in quantize_weight(w, bits, group))
    x = x.to(device_type, dtype)
    try:
        if _integer_path(bits, device_type):
            got = _int8_product(x, qweight, scales)
        else:
            got = _kernel(x, bits, device_type, _layout(qweight, scales, bits, group, dtype)).float()
    except (RuntimeError, NotImplementedError):
        return False
    expected = F.linear(x, dequantize(qweight, scales, bits, dtype)).float()
    return bool(torch.allclose(got, expected, rtol=0.05, atol=0.05 * float(expected.abs().max())))


# --- whole models ----------------------------------------------------------------------------------------


def quantize_model(model, bits: int, group_size: int | None):
    """Replace the model's projections and head by quantized layers, in place; records the
    settings in its config. Returns the model."""
    group_size = check(bits, group_size, model.config)
    dtype = next(model.parameters()).dtype
    for name, linear in targets(model).items():
        b = layer_bits(name, bits)
        layer = QuantLinear(
            *quantize_weight(linear.weight, b, group_size if b == 4 else None), b, group_size if b == 4 else None, dtype
        ).to(linear.weight.device)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    model.config.quantization_config = settings(bits, group_size)
    return model


def load_model(hf_cfg, tensors: dict[str, torch.Tensor], dtype: torch.dtype):
    """A quantized `LlamaForCausalLM` from its config and stored tensors (CPU)."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    found = of_config(hf_cfg)
    bits, group_size = found["bits"], found.get("group_size")
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_cfg)
    for name in targets(model):
        b = layer_bits(name, bits)
        layer = QuantLinear(
            tensors.pop(f"{name}.qweight"), tensors.pop(f"{name}.scales"), b, group_size if b == 4 else None, dtype
        )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    model.load_state_dict(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, strict=False, assign=True
    )
    model.model.rotary_emb = LlamaRotaryEmbedding(hf_cfg)  # its buffers are computed, not stored
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise UserError(
            f"the quantized weights lack {meta[0]}" + (f" (and {len(meta) - 1} more)" if len(meta) > 1 else "")
        )
    return model.eval()


def expected_shapes(hf_cfg, dense: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`model.expected_shapes` for a quantized folder: each quantized weight as its two tensors."""
    found = of_config(hf_cfg)
    bits, group_size = found["bits"], found.get("group_size")
    shapes = dict(dense)
    for name, shape in list(dense.items()):
        base = name.removesuffix(".weight")
        if base != "lm_head" and not base.endswith(PROJECTIONS):
            continue
        out, inner = shape
        b = layer_bits(base, bits)
        del shapes[name]
        shapes[f"{base}.qweight"] = (out, inner) if b == 8 else (out, inner // 2)
        shapes[f"{base}.scales"] = (out,) if b == 8 else (out, inner // group_size)
    return shapes


def describe(hf_cfg) -> dict | None:
    found = of_config(hf_cfg)
    if found is None:
        return None
    return {
        "bits": found["bits"],
        "group_size": found.get("group_size"),
        "lm_head_bits": found.get("lm_head_bits"),
        "kernel_cpu": _cpu_kernel(found["bits"]),
    }


def _cpu_kernel(bits: int) -> str:
    decode = (
        "; decode steps on dscoder's kernel"
        if kernels.library() is not None
        else f"; dscoder's decode kernel: {kernels.status()}"
    )
    if bits == 8 and has_kernel("cpu", 8, torch.float32):
        return "torch's int8 x int8 product (each token's activations quantized to int8)" + decode
    if bits == 4 and has_kernel("cpu", 4, torch.bfloat16):
        return "torch's int4 weight-only kernel"
    return "dequantized weights (no CPU kernel here)"
