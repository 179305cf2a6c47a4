"""Running samples against a benchmark: one sandboxed run per sample, in parallel, resumable.

`DIR/results.jsonl` gets one row per sample (task_id, completion_id, language, status, passed,
seconds, error tail); `DIR/summary.json` gets pass@k per language and overall, the status
counts, FIM line scores where the benchmark has a reference line, and the isolation used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dscoder.errors import UserError
from dscoder.evaluate import metrics, sandbox, toolchains
from dscoder.evaluate.benchmarks import Task

log = logging.getLogger("dscoder")
RESULTS, SUMMARY = "results.jsonl", "summary.json"
BUILT = ("main", "main.js")  # build outputs reused for an identical program


@dataclass(frozen=True)
class ExecConfig:
    """How samples are run."""

    workers: int = 0
    """Parallel sandboxes (0: one per CPU core)."""
    timeout: float = 10.0
    """Wall-clock seconds per command (a build gets three times as long)."""
    memory_mb: int = 2048
    """Address-space limit for languages that allow one."""


def read_samples(path: str | Path) -> list[dict]:
    """`{task_id, completion}` rows (JSON lines); a row's `completion_id` defaults to its order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"samples file not found: {path}")
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8", "replace"))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(row, dict) or "task_id" not in row or not isinstance(row.get("completion"), str):
                raise UserError(f"{path}:{number}: expected task_id and a completion string")
            rows.append(row)
    return number_samples(rows)


def number_samples(rows: list[dict]) -> list[dict]:
    """Give each sample a `completion_id` (its rank among its task's samples) where it has none."""
    seen: Counter = Counter()
    for row in rows:
        row["task_id"] = str(row["task_id"])
        row.setdefault("completion_id", seen[row["task_id"]])
        seen[row["task_id"]] += 1
    return rows


_build_cache: dict[str, Path] = {}


def run_sample(task: Task, completion: str, cfg: ExecConfig, slot: int, cache_dir: Path,
               worker: sandbox.PythonWorker | None = None) -> dict:
    """Build and run one sample; the row written to results.jsonl. Python samples go through
    the slot's fork server when there is one."""
    problem = toolchains.missing(task.language)
    if problem:
        return {"status": "skipped", "passed": False, "error": problem, "seconds": 0.0}
    chain = toolchains.TOOLCHAINS[toolchains.canonical(task.language)]
    program = task.program(completion)
    limits = sandbox.Limits(timeout=cfg.timeout, cpu_seconds=int(cfg.timeout * 2) + 1,
                            memory_bytes=chain.memory_bytes and cfg.memory_mb * 2**20)
    if worker is not None and chain.name == "python":
        folder = worker.folder()
        try:
            toolchains.write_program(chain.name, program, folder)
            result = worker.run(folder, chain.source, limits)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        status = toolchains.status(chain.name, "run", result)
        return {"status": status, "passed": status == "passed", "seconds": round(result.seconds, 3),
                "error": "" if status == "passed" else (result.stderr or result.stdout)[-2000:]}
    key = hashlib.sha256(f"{chain.name}\0{program}".encode("utf-8", "surrogatepass")).hexdigest()
    seconds = 0.0
    with sandbox.Workdir() as work:
        toolchains.write_program(chain.name, program, work)
        for step, command in toolchains.steps(chain.name, program):
            if step == "build" and (cache_dir / key).is_dir():
                for built in (cache_dir / key).iterdir():  # the same program was built before
                    shutil.copy2(built, work / built.name)
                continue
            step_limits = limits if step == "run" else sandbox.Limits(
                timeout=cfg.timeout * 3, cpu_seconds=int(cfg.timeout * 6), memory_bytes=0)
            result = sandbox.run(command, work, step_limits, slot=slot, readable=tuple(toolchains.readable_roots()))
            seconds += result.seconds
            status = toolchains.status(chain.name, step, result)
            if status != "passed":
                return {"status": status, "passed": False, "seconds": round(seconds, 3),
                        "error": (result.stderr or result.stdout)[-2000:]}
            if step == "build":
                _keep_build(work, cache_dir / key)
    return {"status": "passed", "passed": True, "seconds": round(seconds, 3), "error": ""}


def _keep_build(work: Path, target: Path) -> None:
    outputs = [p for p in work.iterdir() if p.name in BUILT or p.suffix == ".class"]
    if outputs and not target.exists():
        tmp = target.with_name(target.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for p in outputs:
            shutil.copy2(p, tmp / p.name)
        tmp.rename(target)


def execute(task_list: list[Task], samples: list[dict], out: Path, cfg: ExecConfig) -> dict:
    """Run every sample not yet in `out/results.jsonl`, then write the summary."""
    from tqdm import tqdm

    by_id = {t.task_id: t for t in task_list}
    samples = number_samples(samples)
    unknown = Counter(s["task_id"] for s in samples if s["task_id"] not in by_id)
    if unknown:
        log.warning("skipped %d samples of %d unknown task ids (e.g. %s)", sum(unknown.values()), len(unknown),
                    next(iter(unknown)))
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    done = {(r["task_id"], r["completion_id"]) for r in _read_results(results_path)}
    todo = [s for s in samples if s["task_id"] in by_id and (s["task_id"], s["completion_id"]) not in done]
    for language in sorted({by_id[s["task_id"]].language for s in todo}):
        problem = toolchains.missing(language)
        if problem:
            log.warning("%s (its samples are marked skipped)", problem)
    workers = cfg.workers or max(1, len(os.sched_getaffinity(0)))
    slots: queue.Queue = queue.Queue()
    for slot in range(workers):
        slots.put(slot)
    cache_dir = out / ".build-cache"
    cache_dir.mkdir(exist_ok=True)

    workers_by_slot: dict[int, sandbox.PythonWorker] = {}

    def python_worker(slot: int) -> sandbox.PythonWorker | None:
        if sandbox.isolation() != "bwrap":
            return None
        worker = workers_by_slot.get(slot)
        if worker is None or not worker.alive():
            if worker is not None:
                worker.close()
            worker = workers_by_slot[slot] = sandbox.PythonWorker(slot, tuple(toolchains.readable_roots()))
        return worker

    def one(sample: dict) -> dict:
        slot = slots.get()
        try:
            task = by_id[sample["task_id"]]
            worker = python_worker(slot) if task.language == "python" else None
            try:
                outcome = run_sample(task, sample["completion"], cfg, slot, cache_dir, worker)
            except RuntimeError:  # the fork server died (it is restarted): run this one on its own
                outcome = run_sample(task, sample["completion"], cfg, slot, cache_dir)
        finally:
            slots.put(slot)
        return {"task_id": sample["task_id"], "completion_id": sample["completion_id"], "language": task.language,
                **outcome}

    with open(results_path, "a", encoding="utf-8") as f, ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(todo), desc="executing", unit=" samples", file=sys.stderr) as bar:
        for row in pool.map(one, todo):
            f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update()
    for worker in workers_by_slot.values():
        worker.close()
    shutil.rmtree(cache_dir, ignore_errors=True)
    summary = summarize(task_list, samples, _read_results(results_path))
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash is run again
    return rows


def summarize(task_list: list[Task], samples: list[dict], results: list[dict]) -> dict:
    """pass@k per language and overall, statuses, and FIM line scores."""
    by_id = {t.task_id: t for t in task_list}
    per_task: dict[str, list[bool]] = defaultdict(list)
    statuses: Counter = Counter()
    for r in results:
        if r["task_id"] in by_id and r["status"] != "skipped":
            per_task[r["task_id"]].append(bool(r["passed"]))
        statuses[r["status"]] += 1
    by_language: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for task_id, passed in per_task.items():
        by_language[by_id[task_id].language].append((len(passed), sum(passed)))

    def scores(counts):
        row = {"tasks": len(counts), "samples": sum(n for n, _ in counts)}
        for k in (1, 10, 100):
            value = metrics.mean_pass_at_k(counts, k)
            if value is not None:
                row[f"pass@{k}"] = value
        return row

    summary = {"overall": scores([c for counts in by_language.values() for c in counts]),
               "languages": {lang: scores(counts) for lang, counts in sorted(by_language.items())},
               "statuses": dict(statuses), "isolation": sandbox.isolation(),
               "tasks_in_benchmark": len(task_list)}
    references = [(s, by_id[s["task_id"]]) for s in samples if s["task_id"] in by_id and by_id[s["task_id"]].suffix is not None
                  and by_id[s["task_id"]].reference]
    if references:
        lines = [metrics.line_scores(s["completion"], t.reference) for s, t in references]
        summary["fim"] = {"line_exact_match": sum(e for e, _ in lines) / len(lines),
                          "edit_similarity": sum(v for _, v in lines) / len(lines), "samples": len(lines)}
    return summary
