"""`dscoder experiment fim-rate`: the FIM rate ablation (paper section 3.1, Figure 3).

Four variants trained on the same data for the same steps: FIM rate 0, 0.5 in PSM order, 1.0 in
PSM order, and 0.5 with PSM and SPM mixed half and half. Measured on held-out code: next-token
loss on plain text (completion), and on FIM prompts built from held-out lines the hole's loss,
exact match and edit similarity (infilling).

The paper, on 1.3B models: 100% FIM infills best and completes worst; 50% PSM keeps completion
close to a model without FIM while gaining infilling; without FIM a model cannot infill.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dscoder import artifacts
from dscoder.artifacts import run_stage
from dscoder.evaluate.intervals import fmt, interval
from dscoder.experiment import common
from dscoder.experiment.common import ExperimentConfig, verdict

log = logging.getLogger("dscoder")

DEFAULT_MINUTES = 8.0  # four variants: about 45 minutes with the corpus, probe and evaluation
VARIANTS = {  # name -> (FIM rate, SPM share of FIM documents)
    "fim_0": (0.0, 0.0),
    "psm_0.5": (0.5, 0.0),
    "psm_1.0": (1.0, 0.0),
    "psm_spm_0.5": (0.5, 0.5),
}
MIN_FIM_CASES = 50


def run(out: Path, cfg: ExperimentConfig, corpus: Path | None = None) -> dict:
    from dscoder.data import corpus as corpus_lib

    cfg = common.check(cfg, DEFAULT_MINUTES)
    common.prepare(
        out,
        "fim-rate",
        cfg,
        corpus,
        min_held_out=1,
        check_held_out=lambda rows: _cases(_texts(corpus_lib.files_of(rows)), cfg),
    )
    files = _texts(common.heldout_files(out))
    cases = _cases(files, cfg)
    steps = common.plan_steps(out, cfg, out / "corpus")
    log.info(
        "fim-rate: %d variants x %d seed(s), %d steps each (about %.1f minutes)",
        len(VARIANTS),
        cfg.seeds,
        steps,
        cfg.minutes,
    )
    models = {
        (name, seed): common.train(
            out, cfg, name, seed, steps, out / "corpus", {"fim.rate": str(rate), "fim.spm_rate": str(spm)}
        )
        for seed in range(cfg.seed, cfg.seed + cfg.seeds)
        for name, (rate, spm) in VARIANTS.items()
    }
    scores = run_stage(out, common.evaluation_stage(cfg), lambda: _evaluate(models, files, cases, cfg))
    return _report(out, cfg, scores, steps)


def _texts(files: list[tuple[str, str, str]]) -> list[str]:
    return [text for _, _, text in files]


def _cases(files: list[str], cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    from dscoder.errors import UserError
    from dscoder.evaluate import heldout as measure

    cases = measure.fim_cases(
        files, cfg.eval_items, cfg.seed, prefix_chars=cfg.fim_max_chars // 2, suffix_chars=cfg.fim_max_chars // 4
    )
    if len(cases) < MIN_FIM_CASES:
        raise UserError(
            f"the held-out repositories have {len(cases)} code lines to make FIM holes from; "
            f"at least {MIN_FIM_CASES} are needed"
        )
    return cases


def _evaluate(models: dict, files: list[str], cases: list, cfg: ExperimentConfig) -> dict:
    """Per variant and seed, the per-item figures (lists, for the intervals)."""
    from dscoder.evaluate import heldout as measure
    from dscoder.infer.engine import Engine

    scores: dict = {}
    for (name, seed), folder in models.items():
        log.info("evaluating %s (seed %d)", name, seed)
        engine = Engine.load(folder, dtype="float32", rows=32)  # a small preset: 32 rows at once
        infills = measure.fim_infills(engine, cases)
        hole = measure.fim_line_losses(engine, cases)
        scores.setdefault(name, []).append(
            {
                "completion_loss": measure.window_losses(engine, files, cfg.seq_len).tolist(),
                "hole_nats": hole[:, 0].tolist(),
                "hole_tokens": hole[:, 1].tolist(),
                "exact_match": measure.exact_matches(infills, cases).tolist(),
                "edit_similarity": measure.edit_similarities(infills, cases).tolist(),
            }
        )
    return {"scores": scores, "fim_cases": len(cases)}


def _per_item(scores: dict, name: str, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One variant's figure item by item, with the weights of its mean (hole loss: per token)."""
    runs = scores[name]
    if key == "hole_loss":
        tokens = np.array([r["hole_tokens"] for r in runs])
        return np.array([r["hole_nats"] for r in runs]) / tokens, tokens
    return np.array([r[key] for r in runs]), None


def _figure(scores: dict, name: str, key: str) -> tuple[float, float, float]:
    values, weights = _per_item(scores, name, key)
    return interval(values, weights=weights)


def _difference(scores: dict, key: str, a: str, b: str) -> tuple[float, float, float]:
    """The paired difference of a figure between variants a and b (a minus b), item by item."""
    (values_a, weights), (values_b, _) = _per_item(scores, a, key), _per_item(scores, b, key)
    return interval(values_a - values_b, weights=weights)


def expectations(scores: dict) -> list[dict]:
    """The paper's directions, each as a difference expected above zero."""
    rows = [
        (
            "rate 1.0 infills better than 0.5 (exact match)",
            _difference(scores, "exact_match", "psm_1.0", "psm_0.5"),
            "{:+.1%}",
            "100% FIM gave the best infilling (Figure 3)",
        ),
        (
            "rate 1.0 infills better than 0.5 (hole loss, 0.5 minus 1.0)",
            _difference(scores, "hole_loss", "psm_0.5", "psm_1.0"),
            "{:+.3f}",
            "100% FIM gave the best infilling (Figure 3)",
        ),
        (
            "rate 1.0 completes worse than 0 (plain loss, 1.0 minus 0)",
            _difference(scores, "completion_loss", "psm_1.0", "fim_0"),
            "{:+.3f}",
            "100% FIM gave the worst completion (Figure 3)",
        ),
        (
            "rate 0.5 completes better than 1.0 (plain loss, 1.0 minus 0.5)",
            _difference(scores, "completion_loss", "psm_1.0", "psm_0.5"),
            "{:+.3f}",
            "50% PSM stays close to no FIM in completion, 100% does not (Figure 3)",
        ),
        (
            "rate 0 cannot infill (exact match, 0.5 minus 0)",
            _difference(scores, "exact_match", "psm_0.5", "fim_0"),
            "{:+.1%}",
            "a model trained without FIM does not infill",
        ),
        (
            "rate 0 cannot infill (hole loss, 0 minus 0.5)",
            _difference(scores, "hole_loss", "fim_0", "psm_0.5"),
            "{:+.3f}",
            "a model trained without FIM does not infill",
        ),
    ]
    return [
        {"expected": text, "difference": diff, "verdict": verdict(diff), "paper": paper, "spec": spec}
        for text, diff, spec, paper in rows
    ]


def _report(out: Path, cfg: ExperimentConfig, evaluated: dict, steps: int) -> dict:
    scores = evaluated["scores"]
    names = list(VARIANTS)
    keys = [
        ("completion_loss", "plain-text loss (nats/token)", "{:.3f}"),
        ("hole_loss", "FIM hole loss (nats/token)", "{:.3f}"),
        ("exact_match", "FIM exact match", "{:.1%}"),
        ("edit_similarity", "FIM edit similarity", "{:.1%}"),
    ]
    figures = {name: {key: _figure(scores, name, key) for key, _, _ in keys} for name in names}
    table = [
        [name, f"{VARIANTS[name][0]:g}", f"{VARIANTS[name][1]:g}"]
        + [fmt(figures[name][key], spec) for key, _, spec in keys]
        for name in names
    ]
    found = expectations(scores)
    plots = [_plot(out, figures)]
    intro = [
        f"Four tiny models (`{cfg.preset}` preset), {steps} steps each ({cfg.minutes:g} minutes planned), "
        f"{cfg.seeds} seed(s), the same corpus and data order; FIM holes from {evaluated['fim_cases']} held-out code "
        f"lines; plain-text loss over up to 64 held-out windows of {cfg.seq_len} tokens.",
        "",
        f"Reproduce: `dscoder experiment fim-rate --out {out} --minutes {cfg.minutes:g} --seeds {cfg.seeds}`",
    ]
    data = {
        "experiment": "fim-rate",
        "config": asdict(cfg),
        "steps": steps,
        "seeds": cfg.seeds,
        "figures": figures,
        "fim_cases": evaluated["fim_cases"],
    }
    common.write_report(
        out,
        "FIM rate: completion against infilling",
        intro,
        [("Figures (mean [95% interval])", ["variant", "FIM rate", "SPM share", *[k[1] for k in keys]], table)],
        found,
        plots,
        data,
    )
    return {**data, "expectations": found}


def _plot(out: Path, figures: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "edit_similarity", "FIM edit similarity (higher: better infilling)"),
        (axes[1], "hole_loss", "FIM hole loss (lower: better infilling)"),
    ):
        for name, figure in figures.items():
            x, y = figure["completion_loss"], figure[key]
            ax.errorbar(
                x[0],
                y[0],
                xerr=[[x[0] - x[1]], [x[2] - x[0]]],
                yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                fmt="o",
                capsize=3,
                label=name,
            )
        ax.set_xlabel("plain-text loss (lower: better completion)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    artifacts.write_figure(out / "fim_rate.png", fig)
    plt.close(fig)
    return "fim_rate.png"
