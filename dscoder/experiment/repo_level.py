"""`dscoder experiment repo-level`: repository-level pretraining data (paper section 2.3, and
its CrossCodeEval comparison with and without repository-level pretraining, Table 7).

Three variants see the same files for the same steps, arranged three ways: (a) the build's
dependency-ordered repository samples (Algorithm 1, `#path` headers); (b) the same samples with
their files in random order; (c) every file its own sample. FIM is off, so every variant learns
left to right and the measures compare arrangements only.

Measured on held-out repositories:
- the loss of each file's tokens with its repository's earlier files before it (the held-out
  samples in dependency order, cut into training-length windows), split into tokens of
  cross-file identifiers (names defined in another file of the repository and not in this one)
  and the rest;
- a cross-file line completion task in the spirit of CrossCodeEval: complete a line that uses
  such a name, given the repository context as `repo-complete` lays it out (the files the target
  depends on, then the target up to the line), scored with CrossCodeEval's code (exact match,
  edit similarity, identifier F1: evaluate/crosscodeeval.py) and by whether the cross-file names
  of the real line are all produced (identifier match).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dscoder import artifacts, formats
from dscoder.artifacts import run_stage
from dscoder.errors import UserError
from dscoder.evaluate.crossfile import (
    LINE_METRICS,
    NAME,
    complete_lines,
    cross_file_names,
    defined_names,
    line_cases,
    line_prompt,
)
from dscoder.evaluate.intervals import fmt, interval
from dscoder.experiment import common
from dscoder.experiment.common import ExperimentConfig, verdict

log = logging.getLogger("dscoder")

DEFAULT_MINUTES = 10.0
VARIANTS = ("ordered", "shuffled", "files")
MIN_REPOSITORIES = 8
MIN_CASES = 30
MAX_WINDOWS = 256  # training-length windows scored per model for the per-token losses


def run(out: Path, cfg: ExperimentConfig, corpus: Path | None = None) -> dict:
    cfg = common.check(cfg, DEFAULT_MINUTES)
    common.prepare(out, "repo-level", cfg, corpus, min_held_out=MIN_REPOSITORIES, check_held_out=_repositories)
    repos = _heldout_repositories(out)
    cases = _cases(out, repos, cfg)
    run_stage(out, "variants", lambda: _variants(out, cfg.seed))
    steps = common.plan_steps(out, cfg, out / "corpus")
    log.info("repo-level: %d variants x %d seed(s), %d steps each", len(VARIANTS), cfg.seeds, steps)
    models = {
        (name, seed): common.train(out, cfg, name, seed, steps, _corpus(out, name), {"fim.rate": "0"})
        for seed in range(cfg.seed, cfg.seed + cfg.seeds)
        for name in VARIANTS
    }
    # "-cceval": lines scored by CrossCodeEval's metrics (folders scored before that are scored again)
    scores = run_stage(out, common.evaluation_stage(cfg) + "-cceval", lambda: _evaluate(out, models, repos, cases, cfg))
    return _report(out, cfg, steps, scores, len(repos))


# --- the variants' corpora -------------------------------------------------------------------------


def _corpus(out: Path, name: str) -> Path:
    return out / "corpus" if name == "ordered" else out / f"corpus-{name}"


def _variants(out: Path, seed: int) -> dict:
    """(b) and (c) from the build's samples: the same files, shuffled within each sample, or one
    sample each (every file keeps its `#path` header, so every variant sees the same text)."""
    from dscoder.data import corpus as corpus_lib

    rng = random.Random(seed)
    shuffled, files = [], []
    for row in corpus_lib.iter_rows(
        out / "corpus", ("id", "repo", "paths", "languages", "text", "n_chars", "n_files", "source")
    ):
        pairs = formats.split_repo_sample(row["text"], row["paths"])
        mixed = pairs[:]
        rng.shuffle(mixed)
        text = formats.repo_sample(mixed)
        shuffled.append({**row, "paths": [p for p, _ in mixed], "text": text, "n_chars": len(text)})
        for k, (path, body) in enumerate(pairs):
            text = formats.repo_sample([(path, body)])
            files.append(
                {**row, "id": f"{row['id']}/{k}", "paths": [path], "text": text, "n_chars": len(text), "n_files": 1}
            )
    corpus_lib.write_corpus(out / "corpus-shuffled", shuffled, {"variant": "files shuffled within each sample"})
    corpus_lib.write_corpus(out / "corpus-files", files, {"variant": "one sample per file"})
    return {"samples": len(shuffled), "files": len(files)}


# --- held-out repositories and the cross-file task ---------------------------------------------------


def _heldout_repositories(out: Path) -> list[dict]:
    from dscoder.data import corpus as corpus_lib

    return _repositories(corpus_lib.iter_rows(out / "heldout", ("repo", "text", "paths")))


def _repositories(rows: Iterable[dict]) -> list[dict]:
    """Each held-out repository of corpus rows: its samples' files in dependency order, and the
    names each Python file defines; refused when fewer than MIN_REPOSITORIES have two Python files."""
    repos: dict[str, dict] = {}
    for row in rows:
        repo = repos.setdefault(row["repo"], {"name": row["repo"], "samples": [], "defines": {}})
        pairs = formats.split_repo_sample(row["text"], row["paths"])
        repo["samples"].append(pairs)
        for path, text in pairs:
            if path.endswith(".py"):
                repo["defines"][path] = defined_names(text)
    found = [r for r in repos.values() if len(r["defines"]) >= 2]
    if len(found) < MIN_REPOSITORIES:
        raise UserError(
            f"the held-out corpus has {len(found)} repositories with two or more Python files; "
            f"this experiment needs at least {MIN_REPOSITORIES} (use a --corpus with more repositories)"
        )
    return found


def _cases(out: Path, repos: list[dict], cfg: ExperimentConfig) -> list[dict]:
    """Lines of held-out Python files that use a cross-file name (not on an import line), with
    the repository written to disk for `repo-complete`'s context builder."""
    rng = random.Random(cfg.seed)
    found = []
    for repo in repos:
        folder = out / "heldout-repos" / repo["name"].replace("/", "__")
        for pairs in repo["samples"]:
            for path, text in pairs:
                target = folder / path
                if not target.is_file():
                    artifacts.write_text(target, text)
        found += line_cases(folder, repo, sorted(repo["defines"]))
    if len(found) < MIN_CASES:
        raise UserError(
            f"the held-out repositories have {len(found)} lines using a name defined in another file; "
            f"at least {MIN_CASES} are needed to build the cross-file completion task"
        )
    return rng.sample(found, min(cfg.eval_items, len(found)))


# --- evaluation ---------------------------------------------------------------------------------------


def _evaluate(out: Path, models: dict, repos: list[dict], cases: list[dict], cfg: ExperimentConfig) -> dict:
    from dscoder.infer.engine import Engine

    scores: dict = {}
    prompts = None  # the same for every variant: one tokenizer, one context length
    for (name, seed), folder in models.items():
        log.info("evaluating %s (seed %d)", name, seed)
        engine = Engine.load(folder, dtype="float32", rows=32)  # a small preset: 32 rows at once
        engine.context = cfg.seq_len  # prompts fitted to the length the variants were trained at
        prompts = prompts or [line_prompt(engine, case) for case in cases]
        cross, rest = _file_losses(engine, repos, cfg.seq_len)
        lines = complete_lines(engine, cases, prompts)
        scores.setdefault(name, []).append(
            {
                "cross_nats": cross[:, 0].tolist(),
                "cross_tokens": cross[:, 1].tolist(),
                "rest_nats": rest[:, 0].tolist(),
                "rest_tokens": rest[:, 1].tolist(),
                **lines,
            }
        )
    return {"scores": scores, "cases": len(cases)}


def _file_losses(
    engine, repos: list[dict], seq_len: int, max_windows: int = MAX_WINDOWS
) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out Python file: (nats, tokens) of its cross-file identifier tokens and of its
    other tokens, each token scored with the sample's earlier text before it in its window
    (windows of `seq_len`, as in training; at most `max_windows` of them, taken from the
    repositories in turn). (F, 2), (F, 2)"""
    from dscoder.evaluate import heldout as measure

    samples = _round_robin([[(repo, pairs) for pairs in repo["samples"]] for repo in repos])
    cross_rows, rest_rows = [], []
    budget = max_windows
    for repo, pairs in samples:
        if budget <= 0:
            break
        text = formats.repo_sample(pairs)
        encoded = engine.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"][: budget * seq_len + 1], encoded["offset_mapping"][: budget * seq_len + 1]
        full = [ids[i : i + seq_len + 1] for i in range(0, len(ids) - seq_len, seq_len)]  # equal lengths, batched
        budget -= max(len(full), 1)
        losses = np.full(len(ids), np.nan)
        for start in range(0, len(full), 8):
            batch = measure.position_losses(engine, full[start : start + 8])
            for k, row in enumerate(batch):
                at = (start + k) * seq_len
                losses[at + 1 : at + seq_len + 1] = row
        starts = np.array([start for start, _ in offsets])
        position = 0
        for path, body in pairs:
            begin = text.index(formats.file_header(path), position) + len(formats.file_header(path))
            position = begin + len(body)
            if path not in repo["defines"]:
                continue
            flagged = np.zeros(len(ids), dtype=bool)
            names = cross_file_names(repo, path)
            for match in NAME.finditer(body):
                if match.group() in names:
                    flagged |= (starts >= begin + match.start()) & (starts < begin + match.end())
            inside = (starts >= begin) & (starts < position) & ~np.isnan(losses)
            if inside.any():
                for rows, mask in ((cross_rows, inside & flagged), (rest_rows, inside & ~flagged)):
                    rows.append((float(losses[mask].sum()), int(mask.sum())))
    return np.array(cross_rows, dtype=np.float64).reshape(-1, 2), np.array(rest_rows, dtype=np.float64).reshape(-1, 2)


def _round_robin(lists: list[list]) -> list:
    """The items of several lists, one from each in turn."""
    out = []
    for k in range(max(map(len, lists), default=0)):
        out += [items[k] for items in lists if k < len(items)]
    return out


# --- report -----------------------------------------------------------------------------------------------


def _loss(scores: dict, name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    nats = np.array([r[f"{kind}_nats"] for r in scores[name]])
    tokens = np.array([r[f"{kind}_tokens"] for r in scores[name]])
    return np.divide(nats, tokens, out=np.zeros_like(nats), where=tokens > 0), tokens


def _difference(scores: dict, key: str, a: str, b: str) -> tuple[float, float, float]:
    if key in ("cross", "rest"):
        (la, weights), (lb, _) = _loss(scores, a, key), _loss(scores, b, key)
        return interval(la - lb, weights=weights)
    return interval(np.array([r[key] for r in scores[a]]) - np.array([r[key] for r in scores[b]]))


def expectations(scores: dict) -> list[dict]:
    paper = "repository-level pretraining improved cross-file completion (CrossCodeEval, Table 7)"
    rows = [
        (
            "cross-file identifiers: ordered samples better than files alone (loss, files minus ordered)",
            _difference(scores, "cross", "files", "ordered"),
            "{:+.3f}",
        ),
        (
            "cross-file identifiers: ordered samples better than shuffled ones (loss, shuffled minus ordered)",
            _difference(scores, "cross", "shuffled", "ordered"),
            "{:+.3f}",
        ),
        (
            "cross-file line completion: ordered better than files alone (identifier match)",
            _difference(scores, "identifier_match", "ordered", "files"),
            "{:+.1%}",
        ),
        (
            "cross-file line completion: ordered better than files alone (exact match)",
            _difference(scores, "exact_match", "ordered", "files"),
            "{:+.1%}",
        ),
    ]
    return [
        {"expected": text, "difference": diff, "verdict": verdict(diff), "paper": paper, "spec": spec}
        for text, diff, spec in rows
    ]


def _report(out: Path, cfg: ExperimentConfig, steps: int, evaluated: dict, repositories: int) -> dict:
    scores = evaluated["scores"]
    figures = {}
    for name in VARIANTS:
        cross, cross_w = _loss(scores, name, "cross")
        rest, rest_w = _loss(scores, name, "rest")
        figures[name] = {
            "cross_file_loss": interval(cross, weights=cross_w),
            "other_loss": interval(rest, weights=rest_w),
            **{k: interval(np.array([r[k] for r in scores[name]])) for k in LINE_METRICS},
        }
    keys = [
        ("cross_file_loss", "cross-file identifier loss", "{:.3f}"),
        ("other_loss", "other tokens' loss", "{:.3f}"),
        ("exact_match", "cross-file line exact match", "{:.1%}"),
        ("edit_similarity", "edit similarity", "{:.1%}"),
        ("identifier_f1", "identifier F1", "{:.1%}"),
        ("identifier_match", "identifier match", "{:.1%}"),
    ]
    table = [[name, *[fmt(figures[name][k], spec) for k, _, spec in keys]] for name in VARIANTS]
    found = expectations(scores)
    plots = [_plot(out, figures)]
    intro = [
        f"Three `{cfg.preset}` models, {steps} steps each ({cfg.minutes:g} minutes planned), {cfg.seeds} seed(s), "
        f"FIM off, windows of {cfg.seq_len} tokens: (a) `ordered`, the build's dependency-ordered samples; "
        "(b) `shuffled`, the same samples with their files in random order; (c) `files`, one sample per file. "
        f"Scored on {repositories} held-out repositories; the completion task has {evaluated['cases']} lines.",
        "",
        f"Reproduce: `dscoder experiment repo-level --out {out} --minutes {cfg.minutes:g} --seeds {cfg.seeds}`",
    ]
    data = {
        "experiment": "repo-level",
        "config": asdict(cfg),
        "steps": steps,
        "seeds": cfg.seeds,
        "figures": figures,
        "repositories": repositories,
        "cases": evaluated["cases"],
    }
    common.write_report(
        out,
        "Repository-level data: cross-file completion",
        intro,
        [("Figures (mean [95% interval])", ["variant", *[k[1] for k in keys]], table)],
        found,
        plots,
        data,
    )
    return {**data, "expectations": found}


def _plot(out: Path, figures: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in (
        (axes[0], "cross_file_loss", "cross-file identifier loss"),
        (axes[1], "other_loss", "other tokens' loss"),
        (axes[2], "identifier_match", "identifier match"),
    ):
        values = [figures[name][key] for name in VARIANTS]
        ax.bar(
            VARIANTS,
            [v[0] for v in values],
            yerr=[[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]],
            capsize=4,
            color=["#369", "#6a9", "#c63"],
        )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    artifacts.write_figure(out / "repo_level.png", fig)
    plt.close(fig)
    return "repo_level.png"
