"""What the `dscoder experiment` commands share: the corpus and its held-out repositories, the
tokenizer, one training budget for every variant, and figures a researcher can trust (95%
intervals by bootstrap, a verdict for each direction the paper expects).

```
OUT/corpus, OUT/heldout   training and held-out corpora (built, or split from --corpus)
OUT/tokenizer             byte-level BPE learned on the training corpus
OUT/stages/NAME.json      a finished stage (kept when the command is run again)
OUT/runs/VARIANT-sSEED/   one training run per variant and seed
OUT/report.md, report.json, *.png
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from dscoder import artifacts
from dscoder.artifacts import run_stage
from dscoder.config import AT_LEAST_ONE, Range, Seed
from dscoder.errors import UserError
from dscoder.evaluate.intervals import RESAMPLES, fmt, interval  # noqa: F401  (the experiments' figures)

log = logging.getLogger("dscoder")

# Standard-library packages held out by default: many modules importing one another, so the
# repository-level measures have cross-file references to score.
HELD_OUT = (
    "json",
    "wsgiref",
    "xmlrpc",
    "sqlite3",
    "email",
    "concurrent",
    "importlib",
    "logging",
    "http",
    "urllib",
    "xml",
    "asyncio",
    "multiprocessing",
    "unittest",
)
MIN_MINUTES = 1.0


@dataclass(frozen=True)
class ExperimentConfig:
    """The knobs every experiment shares."""

    minutes: Annotated[float, Range(0, 10080)] | None = None
    """Training budget of each variant in minutes (None: the experiment's default)."""
    seeds: Annotated[int, AT_LEAST_ONE] = 1
    """Training seeds per variant (intervals then span seeds too)."""
    preset: str = "tiny"
    """Model preset of every variant."""
    corpus_mb: Annotated[int, AT_LEAST_ONE] = 30
    """Megabytes of installed Python code to build the training corpus from (without --corpus)."""
    vocab_size: Annotated[int, AT_LEAST_ONE] = 8000
    seq_len: Annotated[int, AT_LEAST_ONE] = 512
    batch_size: Annotated[int, AT_LEAST_ONE] = 4
    fim_max_chars: int = 1000
    fim_split: str = "line"
    fim_fit_windows: bool = True
    eval_items: Annotated[int, AT_LEAST_ONE] = 300
    """Held-out items scored per measure (FIM holes, completion lines, windows at most 64)."""
    seed: Seed = 0


def check(cfg: ExperimentConfig, default_minutes: float) -> ExperimentConfig:
    """The config with its budget resolved; refused before any work when it cannot train."""
    from dataclasses import replace

    from dscoder import model as model_lib
    from dscoder.train.plan import train_overrides
    from dscoder.train.recipes import check_length
    from dscoder.train.settings import resolve

    preset = model_lib.get_preset(cfg.preset)
    minutes = default_minutes if cfg.minutes is None else cfg.minutes
    if minutes < MIN_MINUTES:
        raise UserError(
            f"--minutes {minutes:g}: at least {MIN_MINUTES:g} minute per variant is needed to train "
            "anything worth comparing"
        )
    # every variant's training settings, checked now rather than after the corpus and tokenizer are built
    check_length(
        resolve("pretrain", None, train_overrides(cfg, Path("corpus"), 20, 0.5)), preset.config.max_position_embeddings
    )
    return replace(cfg, minutes=minutes)


# --- corpus and tokenizer -------------------------------------------------------------------------


def prepare(
    out: Path,
    experiment: str,
    cfg: ExperimentConfig,
    corpus: Path | None,
    min_held_out: int,
    check_held_out: Callable[[list[dict]], object] | None = None,
) -> None:
    """OUT/corpus and OUT/heldout: built from the installed Python packages (the HELD_OUT
    standard-library packages kept apart), or split by repository from a built `corpus`.
    OUT/settings.json keeps what decides the figures; a run resuming OUT must give the same.
    `check_held_out` (the experiment's own test of its held-out data: enough FIM holes, enough
    repositories) sees a given corpus's held-out rows before anything is written."""
    from dscoder.data import corpus as corpus_lib

    if corpus is not None and not corpus_lib.is_corpus(corpus):
        raise UserError(f"--corpus {corpus}: not a corpus folder (build one with `dscoder data build`)")
    rows = None  # the given corpus's rows, read once for the checks and the split
    if corpus is not None and not (out / "stages" / "corpus.json").is_file():
        # refused before anything is written
        rows = _corpus_rows(corpus)
        held = held_out_repositories(corpus, rows, min_held_out)
        if check_held_out is not None:
            check_held_out([r for r in rows if r["repo"] in held])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    settings = _same_settings(out, experiment, cfg, corpus)
    artifacts.make_folder(out)
    artifacts.write_json(out / "settings.json", settings)

    def build_stage():
        if corpus is None:
            from dscoder.config import apply_overrides
            from dscoder.data.build import build
            from dscoder.data.installed import repositories
            from dscoder.data.steps import BuildConfig

            train, held = repositories(cfg.corpus_mb * 1_000_000, HELD_OUT)
            build_cfg = apply_overrides(BuildConfig(), {"order.max_sample_chars": "400000"})
            build(out / "corpus", train, [], [], build_cfg, force=True)
            build(out / "heldout", held, [], [], build_cfg, force=True)
            return {"source": "installed Python packages", "train": len(train), "held_out": [p.name for p in held]}
        return split_corpus(corpus, out / "corpus", out / "heldout", min_held_out, rows)

    record = run_stage(out, "corpus", build_stage)
    held = record["held_out"] if isinstance(record["held_out"], int) else len(record["held_out"])
    if held < min_held_out:
        raise UserError(f"the corpus has {held} held-out repositories; this experiment needs at least {min_held_out}")

    def tokenizer_stage():
        from dscoder import tokenizer as tokenizer_lib

        texts, size = [], 0
        for text in corpus_lib.iter_texts(out / "corpus"):
            texts.append(text)
            size += len(text)
            if size > 20_000_000:
                break
        tokenizer_lib.save(tokenizer_lib.train(texts, cfg.vocab_size, length=len(texts)), out / "tokenizer")
        return {"vocab_size": cfg.vocab_size}

    run_stage(out, "tokenizer", tokenizer_stage)


def _same_settings(out: Path, experiment: str, cfg: ExperimentConfig, corpus: Path | None) -> dict:
    """The settings that decide an experiment's figures, checked against those OUT was made with
    (more seeds may be added later; nothing else may change, or the report would mix runs)."""
    settings = {
        "experiment": experiment,
        "minutes": cfg.minutes,
        "preset": cfg.preset,
        "seq_len": cfg.seq_len,
        "corpus": None if corpus is None else str(corpus.resolve()),
    }
    path = out / "settings.json"
    if not path.is_file():
        return settings
    made = read_json(path)
    trained = any((out / "stages").glob("train-*.json"))
    if made != settings and made.get("experiment") == experiment and not trained:
        # nothing trained yet (e.g. a run refused after its corpus was built): take the new settings,
        # keeping the corpus and tokenizer unless the corpus changed
        log.info("%s: settings changed before any variant trained: planning again", out)
        stale = (
            ("stages", "corpus", "heldout", "tokenizer", "runs", "cache")
            if made.get("corpus") != settings["corpus"]
            else ("stages/plan.json", "runs")
        )
        for name in stale:
            target = out / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        return settings
    for key, value in settings.items():
        if made.get(key) != value:
            shown = {"experiment": "experiment", "corpus": "--corpus"}.get(key, "--" + key.replace("_", "-"))
            raise UserError(
                f"--out {out}: made with {shown} {_show(made.get(key))}, not {_show(value)}; give the "
                "same settings to resume it, or another --out"
            )
    return settings


def _show(value) -> str:
    return "(none)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def evaluation_stage(cfg: ExperimentConfig) -> str:
    """The name of the scoring stage: scores are kept per number of seeds, so adding seeds scores again."""
    return "evaluate" if cfg.seeds == 1 else f"evaluate-{cfg.seeds}-seeds"


def split_corpus(source: Path, train: Path, held: Path, min_held_out: int, rows: list[dict] | None = None) -> dict:
    """Split a built corpus by repository: every tenth repository (by a hash of its name, at
    least `min_held_out`) is held out. Both halves are written as corpus folders. `rows`: the
    source's rows where the caller has read them already."""
    from dscoder.data import corpus as corpus_lib

    rows = _corpus_rows(source) if rows is None else rows
    held_out = held_out_repositories(source, rows, min_held_out)
    for folder, keep in ((train, lambda r: r["repo"] not in held_out), (held, lambda r: r["repo"] in held_out)):
        corpus_lib.write_corpus(folder, [r for r in rows if keep(r)], {"split_from": str(source)})
    return {
        "source": str(source),
        "train": len({r["repo"] for r in rows}) - len(held_out),
        "held_out": sorted(held_out),
    }


def _corpus_rows(corpus: Path) -> list[dict]:
    from dscoder.data import corpus as corpus_lib

    return list(
        corpus_lib.iter_rows(corpus, ("id", "repo", "paths", "languages", "text", "n_chars", "n_files", "source"))
    )


def held_out_repositories(corpus: Path, rows: list[dict], min_held_out: int) -> set[str]:
    """The repositories of `corpus` (its `rows`) held out: every tenth by a hash of its name, at
    least `min_held_out`; refused when too few are left to train on."""
    repos = sorted({r["repo"] for r in rows}, key=lambda name: hashlib.blake2b(name.encode(), digest_size=8).digest())
    count = max(min_held_out, len(repos) // 10)
    if len(repos) < count + 1:
        raise UserError(
            f"--corpus {corpus}: {len(repos)} repositories; at least {count + 1} are needed "
            f"({count} held out and one to train on)"
        )
    return set(repos[:count])


def heldout_files(out: Path) -> list[tuple[str, str, str]]:
    """(repository, path, text) of every held-out file, in repository order."""
    from dscoder.data import corpus as corpus_lib

    return corpus_lib.files(out / "heldout")


# --- training ---------------------------------------------------------------------------------------


def plan_steps(out: Path, cfg: ExperimentConfig, corpus: Path) -> int:
    """Optimizer steps that fill `cfg.minutes` for one variant here (a timed probe, once)."""
    from dscoder.train.plan import speed_probe

    def plan():
        seconds = speed_probe(cfg, corpus, out / "tokenizer", out, cfg.preset)
        return {"steps": max(20, int(cfg.minutes * 60 / seconds)), "seconds_per_step": seconds}

    return run_stage(out, "plan", plan)["steps"]


def train(
    out: Path, cfg: ExperimentConfig, name: str, seed: int, steps: int, corpus: Path, overrides: dict[str, str]
) -> Path:
    """Pretrain one variant for `steps` steps; its final model folder (kept across runs)."""
    from dataclasses import replace

    from dscoder.train.plan import train_overrides
    from dscoder.train.recipes import pretrain
    from dscoder.train.settings import resolve

    run = out / "runs" / f"{name}-s{seed}"
    settings = train_overrides(replace(cfg, seed=seed), corpus, steps, float(overrides.pop("fim.rate", 0.5)))
    settings |= {"loop.max_minutes": str(cfg.minutes * 2), "loop.save_every": str(max(steps // 2, 1))} | overrides
    run_stage(
        out,
        f"train-{name}-s{seed}",
        lambda: pretrain(run, resolve("pretrain", None, settings), out / "tokenizer", cfg.preset, None, resume=True),
    )
    return run / "final"


# --- intervals and verdicts ----------------------------------------------------------------------------


def verdict(difference: tuple[float, float, float]) -> str:
    """Whether an expected difference (oriented so that the paper expects it above zero) was
    seen: its 95% interval above zero, below zero, or across it."""
    _, low, high = difference
    if math.isnan(low):
        return "not measured"
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced (the opposite direction)"
    return "not distinguishable from noise at this budget"


def write_report(
    out: Path,
    title: str,
    intro: list[str],
    tables: list[tuple[str, list[str], list[list[str]]]],
    expectations: list[dict],
    plots: list[str],
    data: dict,
) -> None:
    """report.md (intro, tables, the expected directions with their verdicts, plots) and
    report.json (everything)."""
    lines = [f"# {title}", "", *intro, ""]
    for caption, header, rows in tables:
        lines += [f"### {caption}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += [
        "## The paper's expectations",
        "",
        "| expected | measured difference (95% interval) | verdict | paper |",
        "|---|---|---|---|",
    ]
    for e in expectations:
        lines.append(
            f"| {e['expected']} | {fmt(e['difference'], e.get('spec', '{:.3f}'))} | {e['verdict']} | {e['paper']} |"
        )
    lines += [
        "",
        "Intervals: 95%, bootstrap over held-out items"
        + (" and seeds" if data.get("seeds", 1) > 1 else "")
        + f" ({RESAMPLES} resamples). A direction is *reproduced* when its whole interval is on the expected side. "
        "Differences are paired (both variants scored on the same items, item by item), so they can be decided "
        "while the variants' own intervals, which include the spread between items, overlap.",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    artifacts.write_text(out / "report.md", "\n".join(lines) + "\n")
    artifacts.write_json(out / "report.json", {**data, "expectations": expectations})


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
