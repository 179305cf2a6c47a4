"""The settings of a training run: one typed tree whose sections come from the modules that use
them (data, FIM, optimizer, loop, parallelism, extension), and the defaults each stage of the
recipe starts from. Imports no torch, so `--help` can show the defaults at once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from dscoder import config as config_lib
from dscoder.config import AT_LEAST_ONE, NON_NEGATIVE, Range, Seed
from dscoder.errors import UserError
from dscoder.train import lora
from dscoder.train.dataset import DataConfig
from dscoder.train.distributed import ParallelConfig
from dscoder.train.fim import FIMConfig
from dscoder.train.lora import LoraConfig
from dscoder.train.schedule import OptimConfig

Stage = Literal["pretrain", "extend", "instruct"]


@dataclass(frozen=True)
class LoopConfig:
    """Steps, batches, precision and bookkeeping."""

    max_steps: Annotated[int, AT_LEAST_ONE] = 1000
    """Optimizer steps to run."""
    max_minutes: Annotated[float, NON_NEGATIVE] = 0.0
    """Stop (with a checkpoint) after this much wall time in all (resumes included); 0: no limit."""
    budget_minutes: Annotated[float, NON_NEGATIVE] = 0.0
    """Train for about this much wall time: `max_steps` is the first plan, and the plan follows the
    measured speed until 70% of the budget is used (the schedule keeps its shape), so load that
    comes and goes neither cuts the run short nor stretches it; 0: exactly `max_steps`."""
    batch_size: Annotated[int, AT_LEAST_ONE] = 8
    """Sequences per micro-batch on each process."""
    grad_accum: Annotated[int, AT_LEAST_ONE] = 1
    """Micro-batches per optimizer step."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """bf16 autocast (weights and optimizer stay fp32) or plain fp32."""
    compile: bool = False
    """Compile the model with torch.compile."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    log_every: Annotated[int, AT_LEAST_ONE] = 10
    """Steps between metrics lines."""
    logger: Literal["none", "tensorboard", "wandb"] = "none"
    """Where the metrics lines also go: TensorBoard event files in RUN/tensorboard/, or a W&B run in
    RUN/wandb/ (offline unless WANDB_MODE is set)."""
    eval_every: Annotated[int, NON_NEGATIVE] = 200
    """Steps between evaluation losses (0: only at the end)."""
    eval_batches: Annotated[int, AT_LEAST_ONE] = 8
    """Held-out batches per evaluation."""
    save_every: Annotated[int, NON_NEGATIVE] = 200
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: Annotated[int, NON_NEGATIVE] = 2
    """Checkpoints kept (older ones are deleted)."""
    seed: Seed = 0
    """Seed of the data order, FIM and initialisation."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""


@dataclass(frozen=True)
class ExtendConfig:
    """Long-context extension (paper section 3.3)."""

    rope_factor: Annotated[float, Range(0, 1024, low_open=True)] = 4.0
    """Linear RoPE scaling factor."""
    rope_theta: Annotated[float, Range(0, 1e12, low_open=True)] = 100000.0
    """RoPE base frequency."""
    max_position_embeddings: Annotated[int, NON_NEGATIVE] = 0
    """Positions the extended model supports (0: the run's sequence length)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run does, by section."""

    stage: Stage = "pretrain"
    """Which step of the recipe this run is."""
    data: DataConfig = field(default_factory=DataConfig)
    fim: FIMConfig = field(default_factory=FIMConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    extend: ExtendConfig = field(default_factory=ExtendConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


# Settings each stage starts from, before a TOML file and flags.
STAGE_DEFAULTS: dict[str, dict[str, str]] = {
    "pretrain": {},
    "extend": {"optim.schedule": "constant", "optim.warmup_steps": "10", "loop.max_steps": "200"},
    "instruct": {
        "optim.schedule": "cosine",
        "optim.warmup_steps": "100",
        "optim.weight_decay": "0.0",
        "fim.rate": "0.0",
        "loop.max_steps": "500",
    },
}


def resolve(stage: Stage, toml: Path | None, overrides: dict[str, object]) -> TrainConfig:
    """The stage's defaults, then the TOML file, then the flags (each value held to its bounds)."""
    cfg = config_lib.apply_overrides(TrainConfig(stage=stage), STAGE_DEFAULTS[stage])
    cfg = config_lib.load(cfg, toml, overrides)
    if cfg.stage != stage:
        raise UserError(f"the config says stage {cfg.stage!r} but this is `train {stage}`")
    lora.modules(cfg.lora)  # a UserError naming --lora-targets
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", cfg.loop.device):
        raise UserError(f"--loop.device {cfg.loop.device!r}: expected auto, cpu, cuda or cuda:N")
    return cfg
