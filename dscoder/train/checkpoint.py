"""Checkpoints: a Hugging Face model folder (or, for LoRA runs, a PEFT adapter folder) plus
`training_state.pt` (optimizer, scheduler, RNG, data position), written as a whole folder by
`artifacts.output_dir`, so a checkpoint is whole or absent.

```
RUN/checkpoints/step-0000500/   config.json model.safetensors generation_config.json
                                tokenizer files dscoder.json training_state.pt
```
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from dscoder import artifacts
from dscoder import model as model_lib

STATE = "training_state.pt"


def folder_for(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:07d}"


def latest(run: Path) -> Path | None:
    """The newest complete checkpoint of a run."""
    done = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / STATE).is_file())
    return done[-1] if done else None


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_model(folder: Path, hf_model, state_dict: dict, tokenizer_dir: Path) -> None:
    """A model folder from full (unsharded) weights, in the released layout."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    model_lib.write_released_rope_keys(folder / "config.json")
    artifacts.copy_tokenizer(tokenizer_dir, folder)


def save(run: Path, step: int, write_weights, training_state: dict, keep: int) -> Path:
    """Write checkpoint `step`: `write_weights(folder)` writes the model (or adapter) folder, then
    the training state goes beside it (call on the main process)."""
    final = folder_for(run, step)
    with artifacts.output_dir(final, force=True) as tmp:
        write_weights(tmp)
        torch.save(training_state, tmp / STATE)
    complete = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / STATE).is_file())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(folder: Path) -> dict:
    return torch.load(folder / STATE, map_location="cpu", weights_only=False)
