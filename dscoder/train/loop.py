"""The training loop shared by pretraining, long-context extension and instruction tuning.

AdamW with warm-up and the stage's schedule, gradient accumulation and clipping, bf16 autocast
(CPU and CUDA), SDPA attention, optional torch.compile and activation checkpointing, periodic
evaluation and checkpoints, exact resume. The model is transformers' LlamaForCausalLM; data
parallelism wraps it from outside (distributed.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dscoder import allocator, artifacts
from dscoder import model as model_lib
from dscoder.errors import UserError
from dscoder.train import checkpoint, distributed, loggers
from dscoder.train.dataset import Mixture, eval_batches
from dscoder.train.report import METRICS
from dscoder.train.schedule import OptimConfig, lr_factor, make_optimizer, warmup_steps
from dscoder.train.settings import LoopConfig

log = logging.getLogger("dscoder")


def pick_device(name: str, world: distributed.World) -> torch.device:
    """The device of this process: `--loop.device`, with `cuda` meaning this process's own GPU
    under torchrun."""
    device = model_lib.device_for(name, "--loop.device")
    if device.type == "cuda" and name in ("auto", "cuda"):
        device = model_lib.device_for(f"cuda:{world.local_rank}", "--loop.device")
    return device


def token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked target tokens. (B, T, V), (B, T), (B, T) -> ()."""
    labels = targets.masked_fill(~mask, -100)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def _batch(tokens: np.ndarray, mask: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    t = torch.from_numpy(tokens).to(device, non_blocking=True)
    m = torch.from_numpy(mask).to(device, non_blocking=True)
    return t[:, :-1], t[:, 1:], m[:, 1:]


class Trainer:
    """Runs `cfg` on a model and data, writing metrics and checkpoints into `run`."""

    def __init__(
        self,
        run: Path,
        hf_model,
        tokenizer_dir: Path,
        mixture: Mixture,
        loop: LoopConfig,
        optim: OptimConfig,
        parallel: distributed.ParallelConfig,
        lr: float,
        extra_state: dict | None = None,
    ):
        self.run, self.loop, self.optim_cfg, self.lr = run, loop, optim, lr
        self.tokenizer_dir, self.mixture = tokenizer_dir, mixture
        self.device = pick_device(loop.device, distributed.World())
        self.world = distributed.init(self.device.type)
        self.device = pick_device(loop.device, self.world)
        if self.device.type == "cpu":
            allocator.keep_freed_memory()
        self.hf_model = hf_model.to(self.device)
        self.lora = hasattr(hf_model, "peft_config")  # adapters on a frozen base (lora.py): only they are saved
        if loop.activation_checkpointing:
            enable = (
                getattr(self.hf_model, "activation_checkpointing_enable", None)
                or self.hf_model.gradient_checkpointing_enable
            )
            enable()
            if self.lora:
                self.hf_model.enable_input_require_grads()  # the frozen embeddings give no gradient to recompute
        self.model = distributed.wrap(self.hf_model, self.world, parallel, self.device)
        self.optimizer = make_optimizer(self.hf_model, optim, lr, self.device.type)
        # the plan can change (budget_minutes); the warm-up stays that of the first plan
        self.planned, self.elapsed = loop.max_steps, 0.0
        fixed = replace(optim, warmup_steps=warmup_steps(optim, loop.max_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, fixed, self.planned))
        self.forward = torch.compile(self.model) if loop.compile else self.model
        self.step, self.tokens, self.extra_state = 0, 0, extra_state or {}

    # --- state ---------------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=self.lora)
        return get_state_dict(self.model, self.optimizer, options=options)

    def save(self) -> Path | None:
        model_state, optim_state = self._full_state()
        folder = None
        if self.world.main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": checkpoint.rng_state(),
                "data": self.mixture.state,
                "world_size": self.world.size,
                "planned": self.planned,
                "elapsed": self.elapsed_now(),
                **self.extra_state,
            }
            if self.lora:
                from dscoder.train import lora

                def write(tmp):
                    lora.save(tmp, self.hf_model, model_state, self.tokenizer_dir, lora.counts(self.hf_model))
            else:

                def write(tmp):
                    checkpoint.write_model(tmp, self.hf_model, model_state, self.tokenizer_dir)

            folder = checkpoint.save(self.run, self.step, write, state, self.loop.keep_checkpoints)
        distributed.barrier(self.world)
        return folder

    def resume(self, folder: Path) -> None:
        """Continue from `folder`: weights, optimizer, schedule, RNG and data position."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = checkpoint.load_state(folder)
        if state.get("world_size", 1) != self.world.size:
            log.warning(
                "resuming a run saved with %d processes on %d: the data stream is the same, the reduction order is not",
                state.get("world_size", 1),
                self.world.size,
            )
        if self.lora:
            from dscoder.train import lora

            lora.load_weights(self.hf_model, folder)
            weights = {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}
        else:
            weights = {}
            for file in sorted(folder.glob("*.safetensors")):
                weights.update(load_file(file))
        options = StateDictOptions(full_state_dict=True, strict=False, ignore_frozen_params=self.lora)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=weights, optim_state_dict=state["optimizer"], options=options
        )
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.mixture.state = state["data"]
        self.step, self.tokens = state["step"], state["tokens"]
        self.planned, self.elapsed = state.get("planned", self.planned), state.get("elapsed", 0.0)
        _truncate_metrics(self.run / METRICS, self.step)
        log.info("resumed %s at step %d", folder, self.step)

    def elapsed_now(self) -> float:
        """Seconds of training so far, earlier runs of a resumed one included."""
        started = getattr(self, "_started", None)
        return self.elapsed + (time.perf_counter() - started if started is not None else 0.0)

    def _replan(self, mark: tuple[int, float] | None, bar) -> tuple[int, float] | None:
        """With a time budget: every few steps, plan the run's length from the speed measured since
        the last plan, until 70% of the budget is used. Returns where the next measurement starts."""
        if not self.loop.budget_minutes:
            return mark
        budget = 60 * self.loop.budget_minutes
        if self.step >= self.planned and self.elapsed_now() < 0.9 * budget:  # a plan too short (a probe under
            self._plan(self.elapsed_now() / self.step, bar, at_least=0)  # load): go on at the speed seen so far
        if self.elapsed_now() >= 0.7 * budget:
            return mark
        now = time.perf_counter()
        if mark is None or self.step < 3:  # the first steps are slow (warm-up): measure after them
            return (self.step, now) if self.step >= 3 else None
        window = max(3, self.planned // 50)
        if self.step - mark[0] < window:
            return mark
        self._plan((now - mark[1]) / (self.step - mark[0]), bar)
        return (self.step, now)

    def _plan(self, seconds_per_step: float, bar, at_least: int = 1) -> None:
        """Plan the run's length as what the rest of the time budget holds at `seconds_per_step`
        (and `at_least` more steps)."""
        remaining = 60 * self.loop.budget_minutes - self.elapsed_now()
        planned = self.step + max(at_least, int(remaining / seconds_per_step))
        if planned != self.planned:
            log.debug("re-planned %d -> %d steps (%.3f s/step)", self.planned, planned, seconds_per_step)
            self.planned = planned
            bar.total = planned
            bar.refresh()

    # --- steps -----------------------------------------------------------------------------------

    def _autocast(self):
        if self.loop.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step over `grad_accum` micro-batches: (loss, gradient norm, lr used)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(self.loop.grad_accum):
            tokens, mask = self.mixture.next_batch(self.loop.batch_size, self.world.rank, self.world.size)
            inputs, targets, target_mask = _batch(tokens, mask, self.device)
            sync = micro == self.loop.grad_accum - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self._autocast():
                    logits = self.forward(input_ids=inputs, use_cache=False).logits
                loss = token_loss(logits, targets, target_mask) / self.loop.grad_accum
                loss.backward()
            total += float(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(self.hf_model.parameters(), self.optim_cfg.grad_clip or float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.tokens += self.loop.batch_size * self.loop.grad_accum * self.world.size * self.mixture.seq_len
        return distributed.all_reduce_mean(total, self.world, self.device), float(norm), lr

    @torch.no_grad()
    def evaluate(self) -> float | None:
        self.model.eval()
        losses = []
        for tokens, mask in eval_batches(self.mixture, self.loop.batch_size, self.loop.eval_batches):
            inputs, targets, target_mask = _batch(tokens, mask, self.device)
            if not target_mask.any():
                continue
            with self._autocast():
                logits = self.forward(input_ids=inputs, use_cache=False).logits
            losses.append(float(token_loss(logits, targets, target_mask)))
        return float(np.mean(losses)) if losses else None

    def run_loop(self) -> dict:
        """Train to `max_steps` (or the time limit), then write `RUN/final`."""
        from dscoder.console import progress

        logger = loggers.start(self.loop.logger, self.run, self.step) if self.world.main else loggers.Logger()
        metrics = open(self.run / METRICS, "a", encoding="utf-8") if self.world.main else None
        self._started = time.perf_counter()
        window_start, window_tokens = time.perf_counter(), self.tokens
        plan_mark: tuple[int, float] | None = None  # (step, time) the speed is measured from
        bar = progress(total=self.planned, initial=self.step, desc="train", unit=" steps", disable=not self.world.main)
        last: dict = {}
        try:
            while self.step < self.planned:
                try:
                    loss, norm, lr = self.train_step()
                except torch.OutOfMemoryError:
                    raise UserError(
                        "out of memory: lower --batch-size (and raise --grad-accum to keep the batch)"
                    ) from None
                except RuntimeError as exc:
                    if "alloc" in str(exc).lower() or "out of memory" in str(exc).lower():
                        raise UserError(
                            "out of memory: lower --batch-size (and raise --grad-accum to keep the batch)"
                        ) from None
                    raise
                if not math.isfinite(loss):
                    raise UserError(f"the loss became {loss} at step {self.step}: lower --lr")
                bar.update()
                plan_mark = self._replan(plan_mark, bar)
                limit = self.loop.max_minutes or 1.25 * self.loop.budget_minutes
                out_of_time = bool(limit) and self.elapsed_now() > 60 * limit
                done = self.step >= self.planned or out_of_time
                record = None
                if self.step % self.loop.log_every == 0 or done:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": self.step,
                        "loss": loss,
                        "lr": lr,
                        "tokens": self.tokens,
                        "tokens_per_s": (self.tokens - window_tokens) / max(elapsed, 1e-9),
                        "grad_norm": norm,
                    }
                    window_start, window_tokens = time.perf_counter(), self.tokens
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                if (self.loop.eval_every and self.step % self.loop.eval_every == 0) or done:
                    eval_loss = self.evaluate()
                    if eval_loss is not None:
                        record = (record or {"step": self.step}) | {"eval_loss": eval_loss}
                if record and metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    logger.log(record)
                    last |= record
                if (self.loop.save_every and self.step % self.loop.save_every == 0) or done:
                    self.save()
                if out_of_time:
                    log.info("time limit of %.1f minutes reached at step %d", limit, self.step)
                    break
        finally:
            bar.close()
            if metrics:
                metrics.close()
            logger.close(failed=sys.exc_info()[0] is not None)
        if self.world.main:
            newest = checkpoint.latest(self.run)
            with artifacts.output_dir(self.run / "final", force=True) as final:
                shutil.copytree(newest, final, ignore=shutil.ignore_patterns(checkpoint.STATE), dirs_exist_ok=True)
        distributed.barrier(self.world)
        return last | {"step": self.step, "tokens": self.tokens}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` (they are recomputed when a run resumes)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    artifacts.write_text(path, "".join(line + "\n" for line in kept))
