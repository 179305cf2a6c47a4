"""Training plans from a time budget, shared by the quickstart and the experiments: the
settings of a short run from a few knobs (`train_overrides`) and this machine's seconds per
optimizer step (`speed_probe`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def speed_probe(cfg, corpus: Path, tokenizer: Path, out: Path, preset: str = "tiny") -> float:
    """Seconds per optimizer step of `preset` here: the median of 16 steps of a scratch run,
    after 4 to warm up (6 steps once planned for 0.29 s/step a run that took 0.2)."""
    from dscoder.train.recipes import pretrain
    from dscoder.train.settings import resolve

    run = out / "probe"
    shutil.rmtree(run, ignore_errors=True)
    overrides = train_overrides(cfg, corpus, 20, fim=0.5) | {
        "loop.save_every": "0",
        "loop.eval_every": "0",
        "loop.log_every": "1",
    }
    pretrain(run, resolve("pretrain", None, overrides), tokenizer, preset, None, force=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = sorted(r["tokens_per_s"] for r in rows[4:]) or [rows[-1]["tokens_per_s"]]
    shutil.rmtree(run, ignore_errors=True)
    return cfg.batch_size * cfg.seq_len / speeds[len(speeds) // 2]


def train_overrides(cfg, corpus: Path, steps: int, fim: float) -> dict[str, str]:
    """`train pretrain` settings for `steps` steps on `corpus` from `cfg`'s seq_len, batch_size,
    fim_max_chars, fim_split, fim_fit_windows and seed (a QuickstartConfig or ExperimentConfig)."""
    return {
        "data.sources": str(corpus),
        "data.seq_len": str(cfg.seq_len),
        "loop.batch_size": str(cfg.batch_size),
        "loop.max_steps": str(steps),
        "fim.rate": str(fim),
        "fim.max_chars": str(cfg.fim_max_chars),
        "fim.split": cfg.fim_split,
        "fim.fit_windows": str(cfg.fim_fit_windows).lower(),
        "loop.seed": str(cfg.seed),
        "loop.eval_every": str(max(steps // 8, 1)),
        "loop.save_every": str(max(steps // 4, 1)),
        "loop.log_every": "5",
        "data.eval_fraction": "0.02",
        "data.cache_dir": str(corpus.parent / "cache"),
    }
