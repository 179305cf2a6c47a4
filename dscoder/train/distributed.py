"""Data parallelism from the outside of the model: DDP (gloo on CPU, nccl on GPU) or FSDP2,
set up from the environment `torchrun` provides."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ParallelConfig:
    """How several processes share the work."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """DDP copies the model on every process; FSDP2 shards it (auto: FSDP2 from 1B parameters)."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> World:
    """Join the process group when started by torchrun; a world of one otherwise."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap(model, world: World, cfg: ParallelConfig, device):
    """The model as it is trained: itself, DDP-wrapped, or FSDP2-sharded."""
    if world.size == 1:
        return model
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "fsdp" if sum(p.numel() for p in model.parameters()) >= 1e9 else "ddp"
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(value: float, world: World, device) -> float:
    """The mean of `value` over all processes."""
    if world.size == 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.size


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
