"""`dscoder eval contamination`: which tasks of a benchmark share word n-grams (10 by default)
with a built corpus, with the n-gram code `data build --decontaminate` uses (data/decontam.py),
so a user can see whether a training set leaked into an evaluation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dscoder.benchmark_files import contaminating_strings, detect_format, read_records, task_id
from dscoder.data import corpus as corpus_lib
from dscoder.data.decontam import DecontamConfig, build_index, matches
from dscoder.errors import UserError


def contamination(benchmark: Path, corpus: Path, n: int = 10) -> dict:
    """Per task: the fields (prompt, solution...) whose n-grams occur in the corpus and in how
    many of its samples; overall: the share of tasks with any."""
    from dscoder.console import progress

    if not corpus_lib.is_corpus(corpus):
        raise UserError(f"{corpus}: not a corpus folder of `dscoder data build` (no data/*.parquet and manifest)")
    records = read_records(benchmark)
    fmt = detect_format(records, benchmark)
    ids = [task_id(r, fmt) for r in records]
    _, strings = contaminating_strings(benchmark, records)
    index = build_index(strings, DecontamConfig(ngram=n))
    samples_hit: Counter = Counter()  # "task:field" -> samples
    scanned = 0
    with progress(desc="scanning corpus", unit=" samples") as bar:
        for text in corpus_lib.iter_texts(corpus):
            for owner in matches(text, index):
                samples_hit[owner] += 1
            scanned += 1
            bar.update(1)
    if not scanned:
        raise UserError(f"{corpus}: the corpus has no samples")
    tasks = {}
    for owner, count in samples_hit.items():
        task, _, field = owner.rpartition(":")
        tasks.setdefault(task, {})[field] = count
    per_task = [{"task_id": t, "contaminated": t in tasks, "fields": tasks.get(t, {})} for t in ids]
    hit = sum(row["contaminated"] for row in per_task)
    return {
        "benchmark": str(benchmark),
        "format": fmt,
        "corpus": str(corpus),
        "ngram": n,
        "samples_scanned": scanned,
        "tasks": len(ids),
        "contaminated_tasks": hit,
        "share": hit / len(ids),
        "per_task": per_task,
    }


def markdown(report: dict) -> str:
    lines = [
        f"{report['contaminated_tasks']} of {report['tasks']} tasks ({100 * report['share']:.1f}%) of "
        f"{report['benchmark']} share {report['ngram']}-grams with {report['corpus']} "
        f"({report['samples_scanned']} samples scanned)"
    ]
    rows = [r for r in report["per_task"] if r["contaminated"]]
    if rows:
        lines += ["", "| task | fields found (samples) |", "|---|---|"]
        lines += [
            f"| {r['task_id']} | " + ", ".join(f"{f} ({c})" for f, c in sorted(r["fields"].items())) + " |"
            for r in rows
        ]
    return "\n".join(lines)
