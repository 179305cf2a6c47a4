"""Optimizer and learning-rate schedule (paper section 3.2).

AdamW with beta1 0.9, beta2 0.95. Pretraining warms up linearly, then follows DeepSeek's
three-stage step schedule: the peak rate, then sqrt(1/10) of it, then 1/10 (stage boundaries
were not published; DeepSeek-LLM's 80% / 90% of the steps are the default). Instruction tuning
uses warm-up plus cosine decay; long-context extension a constant rate after warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from dscoder.config import FRACTION, NON_NEGATIVE, POSITIVE, Range


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and learning-rate schedule settings."""

    lr: Annotated[float | None, Range(0, 1, low_open=True)] = None
    """Peak learning rate (default: the preset's, else 3e-4)."""
    schedule: Literal["step", "cosine", "constant"] = "step"
    """DeepSeek's three-stage step decay, cosine decay, or constant after warm-up."""
    warmup_steps: Annotated[int | None, NON_NEGATIVE] = None
    """Linear warm-up steps (default: 2000, at most 5% of the run)."""
    stage_fractions: tuple[Annotated[float, FRACTION], ...] = (0.8, 0.9)
    """Where the step schedule drops, as fractions of the run."""
    stage_factor: Annotated[float, POSITIVE] = math.sqrt(0.1)
    """Multiplier at each drop (two drops end at 10% of the peak)."""
    min_lr_ratio: Annotated[float, FRACTION] = 0.0
    """Floor of the cosine schedule, as a fraction of the peak."""
    betas: tuple[Annotated[float, Range(0, 1)], ...] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.1
    """AdamW weight decay on matrices (not on norms and biases)."""
    grad_clip: Annotated[float, NON_NEGATIVE] = 1.0
    """Largest gradient norm (0 disables clipping)."""
    fused: bool = True
    """Use the fused AdamW kernel where torch has one for the device."""


def warmup_steps(cfg: OptimConfig, max_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return min(2000, max(1, max_steps // 20))


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """The learning rate at `step` (0-based) as a fraction of the peak."""
    warm = warmup_steps(cfg, max_steps)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        progress = (step - warm) / max(1, max_steps - warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    drops = sum(1 for f in cfg.stage_fractions if step >= f * max_steps)
    return cfg.stage_factor**drops


def make_optimizer(model, cfg: OptimConfig, lr: float, device_type: str):
    """AdamW with weight decay on matrices only."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": lr, "betas": tuple(cfg.betas)}
    if cfg.fused and device_type in ("cuda", "cpu"):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)
