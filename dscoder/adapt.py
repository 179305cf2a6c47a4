"""`dscoder adapt`: a code model adapted to your own repositories, measured before and after on
code it did not train on.

1. **split**: each repository's code files, a share held out (at least one file of every
   repository with two or more); the rest copied to `OUT/src/REPO/`, every file to
   `OUT/eval/REPO/` (the repository as an editor sees it, for repository-level prompts).
2. **corpus**: `data build` of the training copies (every step: filters, dedup, dependency
   order, `#path` headers).
3. **before**: the base model on the held-out files.
4. **train**: continued FIM pretraining with LoRA (`train pretrain --lora-rank`): `OUT/train/final`
   is the adapter (PEFT's format).
5. **after**: the base with the adapter merged, on the same held-out files and cases.
6. **instruct** (`--instruct`): the adapter merged into `OUT/merged`, then instruction pairs from the
   training files (`make-instruct`) tune a second adapter of `OUT/merged` (`OUT/instruct/final`).

The held-out measures: next-token loss of the held-out files; single-line FIM on their code lines
(the hole is a whole line; exact match and edit similarity); and repository-level completion of
their lines that use a name defined in another file of the repository (the prompt as
`repo-complete` builds it; exact match, edit similarity, identifier match). FIM and cross-file
lines are drawn from Python files. Each stage is recorded in `OUT/stages/`, so a killed run
continues with `--resume`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from dscoder import artifacts
from dscoder.config import AT_LEAST_ONE, FRACTION, Range, Seed
from dscoder.errors import UserError

log = logging.getLogger("dscoder")

PYTHON_SUFFIX = ".py"


@dataclass(frozen=True)
class AdaptConfig:
    """What `dscoder adapt` trains and measures."""

    held_out: Annotated[float, Range(0.01, 0.5)] = 0.1
    """Share of each repository's code files held out for the before/after measures."""
    steps: Annotated[int, AT_LEAST_ONE] = 300
    """Optimizer steps of continued pretraining (the first plan, with --minutes)."""
    minutes: Annotated[float, Range(0, 525600)] = 0.0
    """Train for about this long instead (0: exactly --steps; at most a year)."""
    seq_len: Annotated[int, Range(16, 1 << 20)] = 1024
    """Tokens per training sequence."""
    batch_size: Annotated[int, AT_LEAST_ONE] = 4
    """Sequences per step."""
    lr: Annotated[float, Range(0, 1, low_open=True)] = 2e-4
    """Peak learning rate of the adapters."""
    fim_rate: Annotated[float, FRACTION] = 0.5
    """Share of documents turned into FIM."""
    lora_rank: Annotated[int, AT_LEAST_ONE] = 16
    """Rank of the adapters."""
    lora_alpha: Annotated[float, Range(0, 65536)] = 32.0
    """Adapter scale numerator (updates x alpha/rank)."""
    lora_targets: str = "q,k,v,o,gate,up,down"
    """Projections with adapters."""
    eval_items: Annotated[int, AT_LEAST_ONE] = 200
    """Most held-out windows, FIM lines and cross-file lines measured."""
    instruct: bool = False
    """Also instruction-tune (pairs from the training files' documented functions)."""
    seed: Seed = 0
    """Seed of the split, the cases and training."""


QUICK = {"steps": 40, "seq_len": 256, "batch_size": 4, "lr": 2e-3, "eval_items": 40, "lora_rank": 8, "lora_alpha": 16.0}


def _train_config(cfg: AdaptConfig, corpus: Path, stage: str = "pretrain"):
    from dscoder.train.settings import resolve

    overrides = {
        "data.seq_len": cfg.seq_len,
        "loop.batch_size": cfg.batch_size,
        "loop.max_steps": cfg.steps,
        "loop.seed": cfg.seed,
        "optim.lr": cfg.lr,
        "lora.rank": cfg.lora_rank,
        "lora.alpha": cfg.lora_alpha,
        "lora.targets": cfg.lora_targets,
        "loop.eval_every": 0,
        "loop.save_every": max(cfg.steps // 4, 1),
    }
    if stage == "pretrain":
        overrides |= {"data.sources": str(corpus), "fim.rate": cfg.fim_rate}
    if cfg.minutes:
        overrides["loop.budget_minutes"] = cfg.minutes
    return resolve(stage, None, {k: str(v) for k, v in overrides.items()})


def check(model: Path, repos: list[Path], out: Path, cfg: AdaptConfig, resume: bool, force: bool):
    """Everything that can be refused before a file is written."""
    from dscoder import model as model_lib
    from dscoder import quantize
    from dscoder.train import lora

    train_cfg = _train_config(cfg, out / "corpus")  # every training setting held to its bounds
    if out.exists() and not (resume or force):
        raise UserError(f"{out} already exists (use --resume to continue it or --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.exists() and force and not resume:
        artifacts.check_replaceable(out)
    hf_cfg = model_lib.load_config(model)
    if quantize.of_config(hf_cfg) is not None:
        raise UserError(f"--model {model}: quantized; adapt the dense model it was made from")
    if not repos:
        raise UserError("--repos: give one or more repository folders, git repositories or archives")
    for repo in repos:
        if not repo.exists():
            raise UserError(f"--repos {repo}: not found")
    if len({r.resolve() for r in repos}) != len(repos):
        raise UserError("--repos: a repository is named twice")
    lora.check(train_cfg.lora, hf_cfg, train_cfg.loop.precision)
    if cfg.seq_len > hf_cfg.max_position_embeddings:
        raise UserError(f"--seq-len {cfg.seq_len} exceeds the model's {hf_cfg.max_position_embeddings} positions")


def run(model: Path, repos: list[Path], out: Path, cfg: AdaptConfig, resume: bool = False, force: bool = False) -> dict:
    """Adapt `model` to `repos` in `out` and return the report's figures."""
    from dscoder.artifacts import run_stage

    check(model, repos, out, cfg, resume, force)
    identity = {"model": str(model.resolve()), "repos": [str(r.resolve()) for r in repos], "settings": asdict(cfg)}
    if out.exists() and resume:
        made = artifacts.read_manifest(out) or {}
        now = {"model": identity["model"], "repos": identity["repos"], **identity["settings"]}
        then = {"model": made.get("model"), "repos": made.get("repos"), **(made.get("settings") or {})}
        changed = [f"{k} {then.get(k)!r}, not {v!r}" for k, v in now.items() if then.get(k) != v]
        if changed:
            raise UserError(
                f"{out} was made with other settings ({'; '.join(changed)}); resume with the same ones or use --force"
            )
    elif out.exists():
        shutil.rmtree(out)
    artifacts.make_output_folder(out)
    artifacts.write_manifest(out, "adapt", **identity)
    split = run_stage(out, "split", lambda: _split(repos, out, cfg))
    run_stage(out, "corpus", lambda: _corpus(out))
    cases = _cases(out, split, cfg)
    before = run_stage(out, "before", lambda: _evaluate(model, out, split, cases, cfg))
    run_stage(out, "train", lambda: _train(model, out, cfg))
    after = run_stage(out, "after", lambda: _evaluate_adapter(model, out, split, cases, cfg))
    if cfg.instruct:
        run_stage(out, "instruct", lambda: _instruct(model, out, cfg))
    return _report(out, model, split, before, after, cfg)


# --- the stages ---------------------------------------------------------------------------------------


def _split(repos: list[Path], out: Path, cfg: AdaptConfig) -> dict:
    """Hold out a share of each repository's code files; write the training and evaluation copies."""
    from dscoder.repo.collect import CollectConfig, read_repository

    rng = random.Random(cfg.seed)
    skips: Counter = Counter()
    held: dict[str, dict] = {}
    names: set[str] = set()
    trained = 0
    for path in repos:
        repo = read_repository(path, CollectConfig(), skips)
        if repo is None or not repo.files:
            raise UserError(f"--repos {path}: no readable text files")
        name = repo.name if repo.name not in names else f"{repo.name}-{len(names)}"
        names.add(name)
        code = [f.path for f in repo.files if f.language]
        count = round(cfg.held_out * len(code)) or (1 if len(code) >= 2 else 0)
        chosen = set(rng.sample(sorted(code), count))
        for f in repo.files:
            artifacts.write_text(out / "eval" / name / f.path, f.text)
            if f.path not in chosen:
                artifacts.write_text(out / "src" / name / f.path, f.text)
                trained += bool(f.language)
        held[name] = {
            "source": str(path),
            "files": sorted(chosen),
            "python": sorted(p for p in chosen if p.endswith(PYTHON_SUFFIX)),
        }
    if not trained:
        raise UserError("--repos: no code files are left to train on")
    log.info("held out %d files of %d repositories", sum(len(h["files"]) for h in held.values()), len(held))
    return {"repos": held}


def _corpus(out: Path) -> dict:
    from dscoder.config import apply_overrides
    from dscoder.data.build import build
    from dscoder.data.steps import BuildConfig

    sources = sorted((out / "src").iterdir())
    stats = build(out / "corpus", sources, [], [], apply_overrides(BuildConfig(), {"run.workers": "1"}))
    return {"files_kept": sum(stats.kept_files.values())}


def _texts(out: Path, split: dict, python_only: bool = False) -> list[str]:
    key = "python" if python_only else "files"
    return [
        (out / "eval" / name / path).read_text(encoding="utf-8")
        for name, repo in sorted(split["repos"].items())
        for path in repo[key]
    ]


def _cases(out: Path, split: dict, cfg: AdaptConfig) -> dict:
    """The held-out FIM lines and cross-file lines, the same for every model."""
    from dscoder.evaluate import crossfile
    from dscoder.evaluate import heldout as measure

    fim = measure.fim_cases(_texts(out, split, python_only=True), cfg.eval_items, cfg.seed)
    lines = []
    for name, repo in sorted(split["repos"].items()):
        folder = out / "eval" / name
        defines = {
            p.relative_to(folder).as_posix(): crossfile.defined_names(p.read_text(encoding="utf-8"))
            for p in sorted(folder.rglob(f"*{PYTHON_SUFFIX}"))
        }
        lines += crossfile.line_cases(folder, {"defines": defines}, repo["python"])
    lines = random.Random(cfg.seed).sample(lines, min(cfg.eval_items, len(lines)))
    return {"fim": fim, "lines": lines}


def _evaluate(folder: Path, out: Path, split: dict, cases: dict, cfg: AdaptConfig) -> dict:
    """The held-out figures of one model folder, per item (so differences can be paired)."""
    from dscoder.evaluate import crossfile
    from dscoder.evaluate import heldout as measure
    from dscoder.infer.engine import Engine

    engine = Engine.load(folder, dtype="float32")
    with _counting_cut_prompts() as cut:
        losses = measure.window_losses(engine, _texts(out, split), cfg.seq_len, max_windows=cfg.eval_items)
        infills = measure.fim_infills(engine, cases["fim"])
        found = {
            "loss": losses.tolist(),
            "fim_exact_match": measure.exact_matches(infills, cases["fim"]).tolist(),
            "fim_edit_similarity": measure.edit_similarities(infills, cases["fim"]).tolist(),
        }
        if cases["lines"]:
            prompts = [crossfile.line_prompt(engine, case) for case in cases["lines"]]
            scored = crossfile.complete_lines(engine, cases["lines"], prompts)
            found |= {f"cross_file_{k}": v for k, v in scored.items() if k != "identifier_f1"}
    if cut:
        log.info("%d prompts were longer than the %d-token context and kept their end", len(cut), engine.context)
    return found | {"prompts_cut": len(cut)}


@contextlib.contextmanager
def _counting_cut_prompts():
    """Collect (instead of printing) the prompt layer's notices that a prompt was cut to fit:
    expected for long held-out files, reported once as a count."""
    cut: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("the prompt has"):
            cut.append(message)
        return not message.startswith(("the prompt has", "repository context:"))

    logger = logging.getLogger("dscoder")
    logger.addFilter(keep)
    try:
        yield cut
    finally:
        logger.removeFilter(keep)


def _train(model: Path, out: Path, cfg: AdaptConfig) -> dict:
    from dscoder.train.recipes import pretrain

    run = out / "train"
    result = pretrain(run, _train_config(cfg, out / "corpus"), None, None, model, resume=run.exists())
    return {"steps": result["step"], "tokens": result["tokens"]}


def _evaluate_adapter(model: Path, out: Path, split: dict, cases: dict, cfg: AdaptConfig) -> dict:
    """The figures of the base with the adapter merged (in a folder removed afterwards)."""
    from dscoder.train import lora

    merged = out / "work" / "merged"
    lora.merge(model, out / "train" / "final", merged, force=True)
    try:
        return _evaluate(merged, out, split, cases, cfg)
    finally:
        shutil.rmtree(out / "work", ignore_errors=True)


def _instruct(model: Path, out: Path, cfg: AdaptConfig) -> dict:
    import json

    from dscoder.texts import read_texts
    from dscoder.train import lora
    from dscoder.train.instruct import make_pairs
    from dscoder.train.recipes import instruct

    pairs = out / "instruct-pairs.jsonl"
    rows = list(make_pairs(iter(read_texts([out / "src"], Counter())), 20000))
    if not rows:
        raise UserError("--instruct: the training files have no documented Python functions to turn into instructions")
    artifacts.write_text(pairs, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    lora.merge(model, out / "train" / "final", out / "merged", force=True)
    run = out / "instruct"
    result = instruct(run, _train_config(cfg, out / "corpus", "instruct"), out / "merged", pairs, resume=run.exists())
    return {"pairs": len(rows), "steps": result["step"]}


# --- the report ---------------------------------------------------------------------------------------

ROWS = (
    ("loss", "held-out loss (nats per token, lower is better)", "{:.3f}"),
    ("fim_exact_match", "single-line FIM: exact match", "{:.1%}"),
    ("fim_edit_similarity", "single-line FIM: edit similarity", "{:.1%}"),
    ("cross_file_exact_match", "cross-file line: exact match", "{:.1%}"),
    ("cross_file_edit_similarity", "cross-file line: edit similarity", "{:.1%}"),
    ("cross_file_identifier_match", "cross-file line: every cross-file name produced", "{:.1%}"),
)


def _report(out: Path, model: Path, split: dict, before: dict, after: dict, cfg: AdaptConfig) -> dict:
    from dscoder.evaluate.intervals import fmt, interval

    files = sum(len(r["files"]) for r in split["repos"].values())
    lines = [
        "# Adapted to your repositories",
        "",
        f"Base: `{model}`. Adapter: `{out / 'train' / 'final'}` (LoRA rank {cfg.lora_rank}, "
        f"{cfg.lora_targets}). Held out: {files} files of {len(split['repos'])} repositories, never trained on.",
        "",
        "| measure | items | before | after | after - before (95% interval) |",
        "|---|---|---|---|---|",
    ]
    figures = {}
    for key, label, spec in ROWS:
        if key not in before or not before[key]:
            lines.append(f"| {label} | 0 | - | - | no held-out items of this kind |")
            continue
        a, b = np.array(after[key]), np.array(before[key])
        diff = interval(a - b)
        figures[key] = {"items": len(a), "before": float(b.mean()), "after": float(a.mean()), "difference": diff}
        lines.append(
            f"| {label} | {len(a)} | {spec.format(b.mean())} | {spec.format(a.mean())} | "
            f"{fmt(diff, spec.replace(':', ':+'))} |"
        )
    lines += [
        "",
        "Use it: `dscoder serve --model BASE --lora mine=ADAPTER` (a request's `model` picks it), or "
        "`dscoder model merge --model BASE --adapter ADAPTER --out MERGED` for a plain model folder.",
    ]
    artifacts.write_text(out / "report.md", "\n".join(lines) + "\n")
    data = {
        "model": str(model),
        "adapter": str(out / "train" / "final"),
        "held_out_files": files,
        "settings": asdict(cfg),
        "figures": figures,
    }
    artifacts.write_json(out / "report.json", data)
    return data
