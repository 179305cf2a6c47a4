"""What a run did: `metrics.jsonl` summarised, and `loss.png`."""

from __future__ import annotations

import json
from pathlib import Path

from dscoder import artifacts
from dscoder.errors import UserError

METRICS = "metrics.jsonl"


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / METRICS
    if not path.is_file():
        raise UserError(f"{run}: no {METRICS} (not a training run folder)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(run: Path) -> Path:
    """Training and evaluation loss against tokens, saved as RUN/loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run)
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r.get("tokens"), r["eval_loss"]) for r in rows if "eval_loss" in r and "tokens" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(run).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(run) / "loss.png"
    fig.tight_layout()
    artifacts.write_figure(out, fig)
    plt.close(fig)
    return out


def summary(run: Path) -> dict:
    """The figures `dscoder train report` prints."""
    rows = read_metrics(run)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    config = json.loads((Path(run) / "config.json").read_text()) if (Path(run) / "config.json").is_file() else {}
    speeds = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
    return {
        "stage": config.get("stage"),
        "steps": train[-1]["step"] if train else 0,
        "tokens": train[-1]["tokens"] if train else 0,
        "first_loss": train[0]["loss"] if train else None,
        "last_loss": train[-1]["loss"] if train else None,
        "best_eval_loss": min((r["eval_loss"] for r in evals), default=None),
        "last_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "median_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "checkpoints": sorted(p.name for p in (Path(run) / "checkpoints").glob("step-*")),
        "final": str(Path(run) / "final") if (Path(run) / "final").is_dir() else None,
    }


def text(run: Path) -> str:
    s = summary(run)

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    return "\n".join(
        [
            f"run          {run} ({s['stage'] or 'unknown stage'})",
            f"steps        {s['steps']:,}   tokens {s['tokens']:,}   median {fmt(s['median_tokens_per_s'], ',.0f')} tokens/s",
            f"train loss   {fmt(s['first_loss'], '.4f')} -> {fmt(s['last_loss'], '.4f')}",
            f"eval loss    last {fmt(s['last_eval_loss'], '.4f')}   best {fmt(s['best_eval_loss'], '.4f')}",
            f"checkpoints  {', '.join(s['checkpoints']) or '-'}",
            f"model        {s['final'] or 'not finished'}",
        ]
    )
