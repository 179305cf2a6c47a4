"""Training metrics where people watch them: TensorBoard or Weights & Biases, beside
`RUN/metrics.jsonl` (`--logger tensorboard|wandb|none`).

The loop hands every record it writes to metrics.jsonl to one `Logger`, on the main process only,
so the same values at the same steps reach the charts. Both packages are optional and imported
here, when asked for; `check` refuses a missing one before the run folder is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dscoder.console import quiet
from dscoder.errors import UserError

# metrics.jsonl key -> chart (TensorBoard tag, W&B key); a key not listed is drawn as train/KEY
TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "tokens": "train/tokens",
    "tokens_per_s": "train/tokens_per_s",
    "grad_norm": "train/grad_norm",
    "eval_loss": "eval/loss",
}
WANDB_MODES = ("offline", "online", "disabled", "dryrun", "run", "shared")  # what wandb accepts in WANDB_MODE


def check(kind: str) -> None:
    """Refuse `--logger KIND` when its package does not import (or WANDB_MODE is not a mode),
    before anything is written."""
    if kind == "none":
        return
    try:
        if kind == "tensorboard":
            import tensorboard  # noqa: F401  (torch's SummaryWriter writes with it)
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        else:
            import wandb  # noqa: F401
    except ImportError as exc:
        broken = "" if exc.name == kind else f"; it does not import here: {exc}"
        raise UserError(f"--logger {kind} needs the {kind} package (pip install {kind}){broken}") from None
    mode = os.environ.get("WANDB_MODE")
    if kind == "wandb" and mode is not None and mode not in WANDB_MODES:
        raise UserError(f"--logger wandb: WANDB_MODE={mode!r} is not one of {', '.join(WANDB_MODES)}")


class Logger:
    """Logs nowhere: `--logger none`, and every process but the main one."""

    def log(self, record: dict) -> None:
        """One metrics.jsonl record: `step` and the values measured at it."""

    def close(self, failed: bool = False) -> None:
        """Write out what is pending and let go; `failed`: the run stopped on an error."""


class TensorBoard(Logger):
    """Event files in RUN/tensorboard/, for `tensorboard --logdir RUN/tensorboard`."""

    def __init__(self, folder: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run recomputes the steps after its checkpoint: TensorBoard drops the events
        # an earlier start logged for them, as metrics.jsonl drops their lines.
        self.writer = SummaryWriter(str(folder), purge_step=step + 1)

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(TAGS.get(key, f"train/{key}"), value, record["step"])
        self.writer.flush()  # watched while it runs, like metrics.jsonl

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandB(Logger):
    """A W&B run in RUN/wandb/, offline unless WANDB_MODE says otherwise (`wandb sync` uploads it).

    Each start of a run folder (a `--resume` too) is its own W&B run from the step it starts at:
    W&B cannot take back the steps a killed start logged after its last checkpoint."""

    def __init__(self, run: Path, config: dict):
        import wandb

        try:
            self.run = wandb.init(
                project="dscoder",
                name=run.resolve().name,
                dir=run,
                config=config,
                mode=os.environ.get("WANDB_MODE", "offline"),
                # the progress bar stays out of W&B's logs; `dscoder -q` silences W&B too
                settings=wandb.Settings(console="off", silent=quiet()),
            )
        except wandb.errors.Error as exc:
            raise UserError(f"--logger wandb: W&B did not start: {exc}") from None

    def log(self, record: dict) -> None:
        values = {TAGS.get(key, f"train/{key}"): value for key, value in record.items() if key != "step"}
        self.run.log(values, step=record["step"])

    def close(self, failed: bool = False) -> None:
        import wandb

        self.run.finish(exit_code=1 if failed else 0)
        wandb.teardown()  # finish() returns before W&B's service has written the run file out


def start(kind: str, run: Path, step: int) -> Logger:
    """The logger `--logger KIND` names, for the run folder `run` whose loop starts after `step`;
    W&B's config is the run's resolved settings (RUN/config.json)."""
    if kind == "tensorboard":
        return TensorBoard(run / "tensorboard", step)
    if kind == "wandb":
        settings = run / "config.json"
        return WandB(run, json.loads(settings.read_text()) if settings.is_file() else {})
    return Logger()
