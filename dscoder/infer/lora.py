"""LoRA adapters served beside their base model (`dscoder serve --lora NAME=DIR`).

An adapter is a folder in PEFT's format: `adapter_config.json` (a peft LoraConfig: `r`,
`lora_alpha`, `use_rslora`, `target_modules`, ...) and `adapter_model.safetensors`, holding for
each adapted linear layer NAME of the base `base_model.model.NAME.lora_A.weight` (r, in) and
`...lora_B.weight` (out, r). The layer then computes y = W x + scale * B (A x), scale =
lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)), as peft's LoRA layer does (Hu et al., 2021).

The weights are added at serving time, per row of a batch, not merged into the base: sequences
for different adapters and for the base run in one batch, each row getting its own adapter's
delta (`Deltas`, called by runner.ModelRunner for every projection) and a base row nothing.
Adapters are read and checked once, before the server starts (dscoder/adapters.py: `read`, then
`check` against the loaded base).
"""

from __future__ import annotations

import torch

from dscoder import quantize
from dscoder.adapters import Adapter, check, read  # noqa: F401  (what the engine and the CLI use from here)


class Deltas:
    """The adapters' weights on the model's device, by the layer they adapt, and each layer's
    LoRA term for the rows of a batch that use an adapter."""

    def __init__(self, model, adapters: dict[str, Adapter]):
        param = next(model.parameters())
        layers = quantize.targets(model)
        self.by_layer: dict[torch.nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for adapter in adapters.values():
            for name, (a, b, scale) in adapter.layers.items():
                self.by_layer.setdefault(layers[name], {})[adapter.name] = (
                    a.to(param.device, param.dtype),
                    b.to(param.device, param.dtype),
                    scale,
                )

    def groups(self, adapters: list[str | None], device: torch.device) -> list[tuple[str, torch.Tensor]]:
        """(adapter, the indices of the rows that use it) for each adapter of a batch's rows."""
        names = dict.fromkeys(a for a in adapters if a is not None)
        return [(name, torch.tensor([i for i, a in enumerate(adapters) if a == name], device=device)) for name in names]

    def add(
        self, layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, groups: list[tuple[str, torch.Tensor]]
    ) -> torch.Tensor:
        """y (B, T, out) = layer(x (B, T, in)), plus scale * B (A x) in the rows of each adapter
        of `groups` that adapts `layer`."""
        found = self.by_layer.get(layer)
        if not found:
            return y
        for name, rows in groups:
            if name in found:
                a, b, scale = found[name]
                y[rows] += (x[rows] @ a.T @ b.T) * scale  # (b, T, r) then (b, T, out)
        return y
