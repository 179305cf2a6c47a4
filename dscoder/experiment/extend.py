"""`dscoder experiment extend`: context extension by linear RoPE scaling (paper section 3.3).

One model pretrained at a short sequence length L, then scored at 4L three ways: as it is; with
linear RoPE scaling x4 and no further training; and after `train extend` (scaling x4 and a short
continued training at 4L, as the paper's 1000 steps at 16K). The loss of every held-out token is
averaged by its position; the paper expects the model as it is to degrade past L and the
extended one to stay flat.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from dscoder import artifacts
from dscoder.artifacts import run_stage
from dscoder.evaluate.intervals import fmt, interval
from dscoder.experiment import common
from dscoder.experiment.common import ExperimentConfig, verdict

log = logging.getLogger("dscoder")

DEFAULT_MINUTES = 25.0  # pretraining at L; the extension trains a fifth of that again
FACTOR = 4
BUCKETS = 8
MIN_WINDOWS = 16
MODELS = ("as_is", "scaled", "extended")


def run(out: Path, cfg: ExperimentConfig, corpus: Path | None = None) -> dict:
    from dscoder.data import corpus as corpus_lib

    cfg = common.check(cfg, DEFAULT_MINUTES)
    short = replace(
        cfg,
        seq_len=cfg.seq_len // FACTOR,
        batch_size=cfg.batch_size * FACTOR,
        fim_max_chars=cfg.fim_max_chars // FACTOR,
    )
    long = cfg.seq_len
    common.prepare(
        out,
        "extend",
        cfg,
        corpus,
        min_held_out=1,
        check_held_out=lambda rows: _enough_text(corpus_lib.files_of(rows), long),
    )
    windows = _windows(out, long)
    steps = common.plan_steps(out, short, out / "corpus")
    models: dict[tuple[str, int], Path] = {}
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        base = common.train(out, short, "base", seed, steps, out / "corpus", {})
        models["as_is", seed] = base
        scaled = out / "runs" / f"scaled-s{seed}"
        run_stage(out, f"scaled-s{seed}", lambda base=base, scaled=scaled: {"model": str(_scaled(base, scaled, long))})
        models["scaled", seed] = scaled
        models["extended", seed] = _extended(out, cfg, base, seed, max(10, steps // 5), long)
    scores = run_stage(out, common.evaluation_stage(cfg), lambda: _evaluate(models, windows))
    return _report(out, cfg, short.seq_len, long, steps, scores)


def _windows(out: Path, length: int) -> list[list[int]]:
    from dscoder import tokenizer as tokenizer_lib

    tok = tokenizer_lib.load(out / "tokenizer")
    windows: list[list[int]] = []
    for _, _, text in common.heldout_files(out):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        windows += [ids[i : i + length + 1] for i in range(0, len(ids) - length - 1, length + 1)]
        if len(windows) >= 64:
            break
    _refuse_if_few(len(windows), length)
    return windows[:64]


def _stretches(tokens: int, length: int) -> int:
    """How many windows of `length` + 1 tokens `_windows` cuts from a file of `tokens` tokens."""
    return len(range(0, tokens - length - 1, length + 1))


def _enough_text(files: list[tuple[str, str, str]], length: int) -> None:
    """Refuse held-out files that cannot hold MIN_WINDOWS windows whatever the tokenizer: a
    byte-level BPE token covers at least one byte, so a file's bytes bound its tokens. (The
    tokenizer, trained later, decides the exact count; `_windows` checks that.)"""
    most = sum(_stretches(len(text.encode("utf-8")), length) for _, _, text in files)
    _refuse_if_few(most, length, "at most ")


def _refuse_if_few(windows: int, length: int, bound: str = "") -> None:
    from dscoder.errors import UserError

    if windows < MIN_WINDOWS:
        raise UserError(
            f"the held-out files have {bound}{windows} stretches of {length + 1} tokens in one file; "
            f"at least {MIN_WINDOWS} are needed to score positions up to {length} (lower --seq-len or "
            "give a corpus with longer held-out files)"
        )


def _scaled(base: Path, folder: Path, positions: int) -> Path:
    """The base model with linear RoPE scaling x4 and no further training."""
    from transformers import LlamaForCausalLM

    from dscoder import model as model_lib

    model = LlamaForCausalLM.from_pretrained(base)
    theta = (model.config.rope_parameters or {}).get("rope_theta", 100000.0)
    scaled = model_lib.with_linear_rope(model, FACTOR, theta, max(positions, model.config.max_position_embeddings))
    with artifacts.output_dir(folder, force=True) as tmp:
        model_lib.save(tmp, scaled.config, base, scaled)
    return folder


def _extended(out: Path, cfg: ExperimentConfig, base: Path, seed: int, steps: int, length: int) -> Path:
    """The base model after `train extend`: scaling x4 and `steps` steps at the long length."""
    from dscoder.train.plan import train_overrides
    from dscoder.train.recipes import extend
    from dscoder.train.settings import resolve

    run = out / "runs" / f"extended-s{seed}"
    overrides = train_overrides(replace(cfg, seed=seed), out / "corpus", steps, 0.5) | {
        "extend.rope_factor": str(FACTOR),
        "extend.max_position_embeddings": str(length),
        "optim.lr": "3e-4",
        "loop.save_every": str(max(steps // 2, 1)),
    }
    run_stage(out, f"extend-s{seed}", lambda: extend(run, resolve("extend", None, overrides), base, resume=True))
    return run / "final"


def _evaluate(models: dict, windows: list[list[int]]) -> dict:
    """Per model and seed, each window's mean loss in each position bucket. (W, BUCKETS) lists"""
    from dscoder.evaluate import heldout as measure
    from dscoder.infer.engine import Engine

    scores: dict = {}
    for (name, seed), folder in models.items():
        log.info("scoring %s (seed %d) by position", name, seed)
        engine = Engine.load(folder, dtype="float32")  # scored by forward passes only: no rows to decode
        losses = np.concatenate(
            [measure.position_losses(engine, windows[i : i + 4]) for i in range(0, len(windows), 4)]
        )
        buckets = losses.reshape(len(windows), BUCKETS, -1).mean(axis=2)  # (W, BUCKETS)
        scores.setdefault(name, []).append(buckets.tolist())
    return {"scores": scores, "windows": len(windows)}


def _past(scores: dict, name: str) -> np.ndarray:
    """(seeds, windows): mean loss past the trained length minus within it."""
    values = np.array(scores[name])  # (S, W, BUCKETS)
    return values[:, :, BUCKETS // FACTOR :].mean(axis=2) - values[:, :, : BUCKETS // FACTOR].mean(axis=2)


def expectations(scores: dict) -> list[dict]:
    late = lambda n: np.array(scores[n])[:, :, BUCKETS // FACTOR :].mean(axis=2)  # noqa: E731
    rows = [
        ("as is, the loss past the trained length rises (past minus within)", interval(_past(scores, "as_is"))),
        (
            "extended, the loss past the trained length rises less than as is",
            interval(_past(scores, "as_is") - _past(scores, "extended")),
        ),
        (
            "past the trained length, extended is better than as is (as is minus extended)",
            interval(late("as_is") - late("extended")),
        ),
    ]
    paper = "RoPE scaling x4 and 1000 steps at 16K make a 4x longer context usable (section 3.3)"
    return [
        {"expected": text, "difference": diff, "verdict": verdict(diff), "paper": paper, "spec": "{:+.3f}"}
        for text, diff in rows
    ]


def _report(out: Path, cfg: ExperimentConfig, short: int, long: int, steps: int, evaluated: dict) -> dict:
    scores = evaluated["scores"]
    width = long // BUCKETS
    figures = {name: [interval(np.array(scores[name])[:, :, b]) for b in range(BUCKETS)] for name in MODELS}
    header = ["model", *[f"{b * width}-{(b + 1) * width}" for b in range(BUCKETS)]]
    table = [[name, *[fmt(f) for f in figures[name]]] for name in MODELS]
    perplexity = [[name, *[fmt(tuple(np.exp(f)), "{:.1f}") for f in figures[name]]] for name in MODELS]
    found = expectations(scores)
    plots = [_plot(out, figures, short, width)]
    intro = [
        f"A `{cfg.preset}` model pretrained at {short} tokens for {steps} steps ({cfg.minutes:g} minutes planned), "
        f"scored at {long} tokens on {evaluated['windows']} held-out windows: as it is, with linear RoPE scaling "
        f"x{FACTOR} and no training, and after `train extend` ({max(10, steps // 5)} steps at {long}).",
        "",
        f"Reproduce: `dscoder experiment extend --out {out} --minutes {cfg.minutes:g} --seeds {cfg.seeds}`",
    ]
    data = {
        "experiment": "extend",
        "config": asdict(cfg),
        "steps": steps,
        "seeds": cfg.seeds,
        "trained_length": short,
        "scored_length": long,
        "figures": figures,
    }
    common.write_report(
        out,
        "Context extension: loss by position",
        intro,
        [
            ("Loss (nats/token) by position bucket, mean [95% interval]", header, table),
            ("Perplexity (e to the loss) by position bucket", header, perplexity),
        ],
        found,
        plots,
        data,
    )
    return {**data, "expectations": found}


def _plot(out: Path, figures: dict, short: int, width: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    centres = [(b + 0.5) * width for b in range(BUCKETS)]
    for name, buckets in figures.items():
        means = [f[0] for f in buckets]
        ax.errorbar(
            centres,
            means,
            yerr=[[f[0] - f[1] for f in buckets], [f[2] - f[0] for f in buckets]],
            fmt="o-",
            capsize=3,
            label=name,
        )
    ax.axvline(short, color="grey", linestyle="--", label="trained length")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats/token)")
    ax.secondary_yaxis("right", functions=(np.exp, lambda p: np.log(np.maximum(p, 1e-9)))).set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    artifacts.write_figure(out / "extend.png", fig)
    plt.close(fig)
    return "extend.png"
