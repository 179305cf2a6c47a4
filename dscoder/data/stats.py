"""What a corpus build kept and dropped, per step, rule and language (`stats.json`,
`dscoder data stats`)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from dscoder.errors import UserError

# The steps in pipeline order, as they appear in stats and rejects.
STEPS = ("collect", "filter", "quality", "decontam", "dedup")


class Stats:
    """Counters that add up across units: files and characters in, dropped and kept."""

    def __init__(self):
        self.files_in: Counter = Counter()  # language -> files
        self.chars_in: Counter = Counter()
        self.dropped: Counter = Counter()  # "step/reason/language" -> files
        self.dropped_chars: Counter = Counter()
        self.kept_files: Counter = Counter()
        self.kept_chars: Counter = Counter()
        self.skipped: Counter = Counter()  # collect-step skips by reason (files never read)
        self.redacted: Counter = Counter()  # PII kind -> replacements
        self.counts: Counter = Counter()  # repositories, samples, ...

    def drop(self, step: str, reason: str, language: str | None, chars: int, files: int = 1) -> None:
        key = f"{step}/{reason}/{language or 'unknown'}"
        self.dropped[key] += files
        self.dropped_chars[key] += chars

    def to_json(self) -> dict:
        return {name: dict(sorted(getattr(self, name).items())) for name in vars(self)}

    @classmethod
    def from_json(cls, data: dict) -> "Stats":
        stats = cls()
        for name, values in data.items():
            if hasattr(stats, name):
                setattr(stats, name, Counter(values))
        return stats

    def add(self, other: "Stats") -> None:
        for name in vars(self):
            getattr(self, name).update(getattr(other, name))


def nothing_kept(data: dict) -> str:
    """One line saying why a build kept no sample: what was read, not read and dropped."""
    read = sum(data["files_in"].values())
    parts = [f"{data.get('counts', {}).get('repositories', 0):,} repositories, {read:,} files read"]
    if data.get("skipped"):
        parts.append(
            "not read: "
            + ", ".join(f"{reason} {n:,}" for reason, n in sorted(data["skipped"].items(), key=lambda x: -x[1]))
        )
    by_reason: Counter = Counter()
    for key, files in data["dropped"].items():
        step, reason, _ = key.split("/", 2)
        by_reason[f"{step}/{reason}"] += files
    if by_reason:
        parts.append("dropped: " + ", ".join(f"{reason} {n:,}" for reason, n in by_reason.most_common()))
    return "; ".join(parts)


def read(path: str | Path) -> dict:
    path = Path(path)
    file = path / "stats.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no stats.json (not a finished corpus folder)")
    return json.loads(file.read_text(encoding="utf-8"))


def _mb(chars: int) -> str:
    return f"{chars / 1e6:,.2f}"


def report(data: dict) -> str:
    """A readable summary of `stats.json`."""
    lines = []
    counts = data.get("counts", {})
    files_in, chars_in = sum(data["files_in"].values()), sum(data["chars_in"].values())
    kept_files, kept_chars = sum(data["kept_files"].values()), sum(data["kept_chars"].values())
    lines.append(
        f"repositories {counts.get('repositories', 0):,}   samples kept {counts.get('samples_kept', 0):,} "
        f"of {counts.get('samples', 0):,}"
    )
    lines.append(
        f"files        {files_in:,} read -> {kept_files:,} kept   "
        f"({_mb(chars_in)} -> {_mb(kept_chars)} M chars, {100 * kept_chars / max(chars_in, 1):.1f}% kept)"
    )
    if data.get("skipped"):
        lines.append("\nnot read (collect)")
        lines += [f"  {reason:28s} {n:>10,}" for reason, n in sorted(data["skipped"].items(), key=lambda x: -x[1])]
    by_step: dict[str, list] = defaultdict(list)
    for key, files in data["dropped"].items():
        step, reason, language = key.split("/", 2)
        by_step[step].append((reason, language, files, data["dropped_chars"].get(key, 0)))
    for step in STEPS:
        if step not in by_step:
            continue
        rows = sorted(by_step[step], key=lambda r: (-r[2], r[0], r[1]))
        total = sum(r[2] for r in rows)
        lines.append(f"\ndropped at {step}: {total:,} files")
        lines.append(f"  {'rule':24s} {'language':14s} {'files':>10s} {'M chars':>10s}")
        lines += [f"  {r:24s} {lang:14s} {f:>10,} {_mb(c):>10s}" for r, lang, f, c in rows]
    lines.append("\nkept by language")
    lines.append(f"  {'language':14s} {'files':>10s} {'M chars':>10s}")
    for language, files in sorted(data["kept_files"].items(), key=lambda x: -data["kept_chars"].get(x[0], 0)):
        lines.append(f"  {language:14s} {files:>10,} {_mb(data['kept_chars'].get(language, 0)):>10s}")
    if data.get("redacted"):
        lines.append("\nPII redacted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(data["redacted"].items())))
    return "\n".join(lines)
