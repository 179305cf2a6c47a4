"""One repository through the pipeline: the per-file steps, then the repository-level sample.

Per file, in order: rule filter -> quality screening -> decontamination -> PII redaction. Every
step takes a file and returns a drop reason (or None); redaction rewrites the text. Screening
runs before dependency ordering so each sample is built once from its final files, and the
repository-level dedup then compares those final samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from dscoder import formats
from dscoder.config import AT_LEAST_ONE, NON_NEGATIVE
from dscoder.data.decontam import BenchmarkIndex, DecontamConfig, match
from dscoder.data.dedup import DedupConfig
from dscoder.data.filters import FilterConfig, rule_reason
from dscoder.data.pii import PIIConfig, redact
from dscoder.data.quality import QualityConfig, quality_reason
from dscoder.data.stats import Stats
from dscoder.repo.collect import CollectConfig, Repository
from dscoder.repo.dependencies import OrderConfig, analyze
from dscoder.repo.imports import CodeFile
from dscoder.repo.parsing import PARSED_LANGUAGES, parse

log = logging.getLogger("dscoder")


@dataclass(frozen=True)
class RunConfig:
    """How the build is split and executed."""

    workers: Annotated[int, NON_NEGATIVE] = 0
    """Worker processes (0: one per CPU core)."""
    repos_per_unit: Annotated[int, AT_LEAST_ONE] = 16
    """Repositories per unit of work (a unit is resumed or redone whole)."""
    bucket_bytes: Annotated[int, AT_LEAST_ONE] = 64_000_000
    """Approximate bytes of dataset rows per bucket (bounds a unit's memory)."""
    shuffle_bytes: Annotated[int, AT_LEAST_ONE] = 256_000_000
    """Approximate bytes of dedup band keys per task finding duplicate pairs (bounds its memory;
    the result does not depend on it)."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything `dscoder data build` does, by step."""

    collect: CollectConfig = field(default_factory=CollectConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    order: OrderConfig = field(default_factory=OrderConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _reject(repo: Repository, f, step: str, reason: str, detail: str = "") -> dict:
    return {
        "repo": repo.name,
        "path": f.path,
        "language": f.language,
        "step": step,
        "reason": reason,
        "detail": detail,
        "text": f.text,
        "n_chars": len(f.text),
        "source": repo.source,
    }


def screen_file(f, cfg: BuildConfig, bench: BenchmarkIndex | None) -> tuple[str, str, str, object]:
    """Run the per-file steps: (step, reason, detail, parsed) with an empty step when kept."""
    reason = rule_reason(f.text, f.language, cfg.filters)
    if reason:
        return "filter", reason, "", None
    parsed = parse(f.text, f.language, f.path) if f.language in PARSED_LANGUAGES else None
    reason = quality_reason(f.text, parsed, cfg.quality)
    if reason:
        return "quality", reason, parsed.error if parsed is not None else "", None
    if bench is not None:
        owner = match(f.text, bench)
        if owner:
            return "decontam", owner.split(":", 1)[0], owner, None
    return "", "", "", parsed


def process_repository(
    repo: Repository, cfg: BuildConfig, bench: BenchmarkIndex | None, stats: Stats
) -> tuple[list[dict], list[dict]]:
    """A repository's samples (dependency-ordered components and file-level samples) and the
    rejects of its files."""
    stats.counts["repositories"] += 1
    kept: list[CodeFile] = []
    rejects: list[dict] = []
    for f in repo.files:
        stats.files_in[f.language] += 1
        stats.chars_in[f.language] += len(f.text)
        step, reason, detail, parsed = screen_file(f, cfg, bench)
        if step:
            stats.drop(step, reason, f.language, len(f.text))
            rejects.append(_reject(repo, f, step, reason, detail))
            continue
        text = redact(f.text, cfg.pii, stats.redacted)
        kept.append(CodeFile(f.path, text, f.language, parsed))
        stats.kept_files[f.language] += 1
        stats.kept_chars[f.language] += len(text)

    by_path = {f.path: f for f in kept}
    if cfg.order.enabled:
        groups = analyze(kept, repo.name, cfg.order.seed).groups
        groups = [part for group in groups for part in split_group(group, by_path, cfg.order.max_sample_chars)]
        groups.sort(key=min)
    else:
        groups = [[f.path] for f in kept]

    samples = []
    for number, group in enumerate(groups):
        files = [by_path[p] for p in group]
        text = formats.repo_sample((f.path, f.text) for f in files)  # every file headed by its path
        samples.append(
            {
                "id": f"{repo.name}/{number:05d}",
                "repo": repo.name,
                "paths": group,
                "languages": sorted({f.language for f in files}),
                "text": text,
                "n_chars": len(text),
                "n_files": len(files),
                "source": repo.source,
            }
        )
    stats.counts["samples"] += len(samples)
    return samples, rejects


def split_group(group: list[str], by_path: dict, max_chars: int) -> list[list[str]]:
    """Consecutive runs of an ordered component, each under `max_chars` (a larger single file
    stays whole)."""
    parts, current, size = [], [], 0
    for path in group:
        length = len(by_path[path].text) + len(path) + 2
        if current and size + length > max_chars:
            parts.append(current)
            current, size = [], 0
        current.append(path)
        size += length
    return parts + [current] if current else parts


def failed_repository(repo: Repository, exc: BaseException, stats: Stats) -> list[dict]:
    """An unexpected error inside one repository: its files go to the rejects, counted."""
    log.warning("repository %s failed (%s: %s); its files are in the rejects", repo.name, type(exc).__name__, exc)
    stats.counts["repositories_failed"] += 1
    for f in repo.files:
        stats.drop("collect", "processing_error", f.language, len(f.text))
    return [_reject(repo, f, "collect", "processing_error", f"{type(exc).__name__}: {exc}") for f in repo.files]
