"""LoRA adapter folders (PEFT's format), read and checked against a base model: for serving them
beside the base (infer/lora.py) and for merging them into it (train/lora.py).

An adapter is a folder with `adapter_config.json` (a peft LoraConfig: `r`, `lora_alpha`,
`use_rslora`, `target_modules`, ...) and `adapter_model.safetensors`, holding for each adapted
linear layer NAME of the base `base_model.model.NAME.lora_A.weight` (r, in) and
`...lora_B.weight` (out, r). The layer then computes y = W x + scale * B (A x), scale =
lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)), as peft's LoRA layer does (Hu et al., 2021).
A folder that is not a LoRA adapter, or one made for another base, is one line naming both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from dscoder import quantize
from dscoder.errors import UserError

KEY = re.compile(r"base_model\.model\.(.+)\.(lora_A|lora_B|base_layer)\.weight")  # a weight's name in the file
UNSUPPORTED = {
    "use_dora": "DoRA",
    "alpha_pattern": "a per-module lora_alpha (alpha_pattern)",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA",
    "use_qalora": "QALoRA",
    "lora_bias": "a bias on lora_B",
}  # peft settings that change the forward


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter as read from its folder: per adapted layer of the base, its weights."""

    name: str
    folder: Path
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # layer name -> (A (r, in), B (out, r), scale)
    base_weights: dict[str, torch.Tensor]  # a base layer's own weight saved beside (save_embedding_layers)
    made_for: str | None = None  # the base its config names (base_model_name_or_path), for error messages
    flag: str = ""  # how the user named it (`--lora NAME=DIR`, `--adapter DIR`), for error messages


def read(flags: list[tuple[str, Path]], base_name: str) -> dict[str, Adapter]:
    """The adapters `--lora` names, by name, read and checked as far as can be without the base."""
    adapters: dict[str, Adapter] = {}
    for name, folder in flags:
        said = f"--lora {name}={folder}"
        if name in adapters:
            raise UserError(f"{said}: the name {name!r} is given twice (each adapter needs its own name)")
        if name == base_name:
            raise UserError(f"{said}: {name!r} is the base model's name; give the adapter another")
        adapters[name] = read_folder(name, folder, said)
    return adapters


def read_folder(name: str, folder: Path, said: str) -> Adapter:
    """One adapter folder, checked as far as can be without the base; `said` names it in errors."""
    if not folder.is_dir():
        raise UserError(f"{said}: no such folder")
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{said}: not a PEFT adapter folder (no adapter_config.json)")
    try:
        import peft
    except ImportError as exc:
        raise UserError(
            f"--lora needs peft, which does not import here ({exc}): pip install 'dscoder[train]'"
        ) from None
    try:
        config = peft.PeftConfig.from_pretrained(str(folder))
    except Exception as exc:  # peft raises what json, its dataclasses or a missing field raise
        raise UserError(f"{said}: adapter_config.json cannot be read ({type(exc).__name__}: {exc})") from None
    kind = getattr(config.peft_type, "value", config.peft_type)
    if kind != "LORA":
        raise UserError(f"{said}: its peft_type is {kind}; only LORA adapters are served")
    for setting, what in UNSUPPORTED.items():
        if getattr(config, setting, None):
            raise UserError(f"{said}: uses {what} ({setting} in adapter_config.json), which dscoder does not apply")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(
            f"{said}: no adapter_model.safetensors (save the adapter with peft's save_pretrained, "
            "safe_serialization on)"
        )
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as exc:
        raise UserError(f"{weights}: cannot be read ({type(exc).__name__}: {exc})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        found = KEY.fullmatch(key)
        if found is None:
            raise UserError(
                f"{weights}: holds {key}, which is not a LoRA weight (lora_A, lora_B) of a linear layer; "
                "dscoder applies nothing else"
            )
        parts.setdefault(found[1], {})[found[2]] = tensor
    layers, base_weights = {}, {}
    for layer, found in parts.items():
        if "base_layer" in found:
            base_weights[layer] = found.pop("base_layer")
        if not found:
            continue
        a, b = found.get("lora_A"), found.get("lora_B")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise UserError(f"{weights}: {layer} needs lora_A (r, in) and lora_B (out, r) of one rank r")
        rank = a.shape[0]  # peft's rank_pattern gives a layer its own rank, and so its own scale
        layers[layer] = (a, b, config.lora_alpha / (math.sqrt(rank) if config.use_rslora else rank))
    if not layers:
        raise UserError(f"{weights}: holds no LoRA weights")
    return Adapter(name, folder, layers, base_weights, config.base_model_name_or_path, said)


def check(adapters: dict[str, Adapter], model, base: str) -> None:
    """A one-line UserError for an adapter that does not fit the loaded base model `model` (the
    folder `base`): a layer it adapts that the base lacks, or of other shapes, or base weights
    saved with it (peft does for lm_head) that are not the base's (to bfloat16 precision; a
    quantized base's are compared by shape)."""
    layers = quantize.targets(model)  # the linear layers the runner projects through
    for adapter in adapters.values():
        other = f"made for another model{f' ({adapter.made_for})' if adapter.made_for else ''}"
        for name, (a, b, _) in adapter.layers.items():
            layer = layers.get(name)
            if layer is None and name in dict(model.named_modules()):
                raise UserError(
                    f"{adapter.flag}: adapts {name}, which dscoder does not (it adapts the attention "
                    "and MLP projections and lm_head)"
                )
            if layer is None:
                raise UserError(f"{adapter.flag}: {other}: the base {base} has no layer {name}")
            if (a.shape[1], b.shape[0]) != (layer.in_features, layer.out_features):
                raise UserError(
                    f"{adapter.flag}: {other}: its {name} maps {a.shape[1]} to {b.shape[0]} features, "
                    f"the base {base}'s maps {layer.in_features} to {layer.out_features}"
                )
        for name, weight in adapter.base_weights.items():  # peft saves lm_head's own weights beside its LoRA
            layer = layers.get(name)
            dense = getattr(layer, "weight", None)
            if (
                layer is None
                or tuple(weight.shape) != (layer.out_features, layer.in_features)
                or (isinstance(dense, torch.Tensor) and not torch.allclose(weight.float(), dense.float(), rtol=2**-8))
            ):
                raise UserError(
                    f"{adapter.flag}: holds other weights for {name} than the base {base}'s, which the "
                    "dscoder does not apply (peft's save_embedding_layers; adapt the base they came from)"
                )
