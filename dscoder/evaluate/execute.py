"""Running samples against a benchmark: one sandboxed run per sample, in parallel, resumable.

A results folder belongs to one run:
```
DIR/run.json        the run: name, benchmark (path, format, sha256), where the samples came from
                    (a model and its generation settings, or a samples file), execution settings
                    and the isolation mode
DIR/results.jsonl   one row per sample: task_id, completion_id, sample_sha (of its completion),
                    language, status, passed, seconds, error tail
DIR/summary.json    pass@k per language and overall, tasks covered out of the benchmark's, status
                    counts, FIM line scores where the benchmark has a reference line, isolation
DIR/expected.jsonl  HumanEval+/MBPP+: the canonical solutions' outputs and times (plus.py), whose
                    rows also say `base_passed` and whose summary has the base tests' pass@k
```
Running into a folder of another run (another model, benchmark or settings) is refused unless
`force`; resuming reuses only results whose sample text is the same, and the summary covers
exactly the samples of this run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import queue
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

from dscoder import artifacts
from dscoder.benchmark_files import DIFFICULTIES
from dscoder.config import Range
from dscoder.errors import UserError
from dscoder.evaluate import manifest, metrics, plus, sandbox, toolchains
from dscoder.evaluate.benchmarks import Task

log = logging.getLogger("dscoder")
RESULTS, SUMMARY, RUN = "results.jsonl", "summary.json", "run.json"
BUILT = ("main", "main.js", "main.exe")  # build outputs reused for an identical program


@dataclass(frozen=True)
class ExecConfig:
    """How samples are run."""

    workers: Annotated[int, Range(0, 1024)] = 0
    """Parallel sandboxes (0: one per CPU core)."""
    timeout: Annotated[float, Range(0, 3600, low_open=True)] = 10.0
    """Wall-clock seconds per command on a reference machine (a build gets three times as long);
    scaled by how much slower this machine runs now (see `calibrate`)."""
    memory_mb: Annotated[int, Range(64)] = 2048
    """Address-space limit for languages that allow one."""
    sandbox: Literal["auto", "bwrap", "unshare", "none"] = "auto"
    """Isolation: the strongest that works here (auto), or a named one (sandbox.py)."""
    calibrate: bool = True
    """Scale `timeout` by the load factor of this machine (sandbox.load_factor), measured at the
    start and again when samples time out, so a slow or busy machine does not turn correct
    programs into timeouts."""


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


def sample_sha(completion: str) -> str:
    """What identifies a sample's text in results.jsonl."""
    return hashlib.sha256(completion.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def run_sample(
    task: Task,
    completion: str,
    cfg: ExecConfig,
    mode: str,
    slot: int,
    cache_dir: Path,
    worker: sandbox.PythonWorker | None = None,
) -> dict:
    """Build and run one sample in sandbox `mode`; the row written to results.jsonl. Python
    samples go through the slot's fork server when there is one."""
    problem = toolchains.missing(task.language)
    if problem:
        return {"status": "skipped", "passed": False, "error": problem, "seconds": 0.0}
    chain = toolchains.TOOLCHAINS[toolchains.canonical(task.language)]
    program = task.program(completion)
    timeout = max(cfg.timeout, plus.program_seconds(task)) if task.format in plus.FORMATS else cfg.timeout
    limits = sandbox.Limits(
        timeout=timeout, cpu_seconds=int(timeout * 2) + 1, memory_bytes=chain.memory_bytes and cfg.memory_mb * 2**20
    )
    if worker is not None and chain.name == "python":
        folder = worker.folder()
        try:
            toolchains.write_program(chain.name, program, folder)
            result = worker.run(folder, chain.source, limits)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if task.format in plus.FORMATS:
            return plus.outcome(result)
        status = toolchains.status(chain.name, "run", result)
        return {
            "status": status,
            "passed": status == "passed",
            "seconds": round(result.seconds, 3),
            "error": "" if status == "passed" else (result.stderr or result.stdout)[-2000:],
        }
    key = hashlib.sha256(f"{chain.name}\0{program}".encode("utf-8", "surrogatepass")).hexdigest()
    seconds = 0.0
    with sandbox.Workdir() as work:
        toolchains.write_program(chain.name, program, work)
        for step, command in toolchains.steps(chain.name, program):
            if step == "build" and _reuse_build(cache_dir / key, work):
                continue
            step_limits = (
                limits
                if step == "run"
                else sandbox.Limits(timeout=cfg.timeout * 3, cpu_seconds=int(cfg.timeout * 6), memory_bytes=0)
            )
            result = sandbox.run(command, work, step_limits, mode, slot=slot, readable=toolchains.readable_roots())
            seconds += result.seconds
            if task.format in plus.FORMATS:
                return plus.outcome(result)
            status = toolchains.status(chain.name, step, result)
            if status != "passed":
                return {
                    "status": status,
                    "passed": False,
                    "seconds": round(seconds, 3),
                    "error": (result.stderr or result.stdout)[-2000:],
                }
            if step == "build":
                _keep_build(work, cache_dir / key)
    return {"status": "passed", "passed": True, "seconds": round(seconds, 3), "error": ""}


def _reuse_build(kept: Path, work: Path) -> bool:
    """Copy the outputs of an identical program built before into `work`, if there are any."""
    try:
        for built in kept.iterdir():
            shutil.copy2(built, work / built.name)
        return True
    except OSError:  # never built (or replaced by an identical build meanwhile): build it
        return False


def _keep_build(work: Path, target: Path) -> None:
    outputs = [p for p in work.iterdir() if p.name in BUILT or p.suffix == ".class"]
    if outputs and not target.exists():
        with artifacts.output_dir(target, force=True) as tmp:
            for p in outputs:
                shutil.copy2(p, tmp / p.name)


# --- the run a results folder belongs to ---------------------------------------------------------


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def benchmark_sha(files: list[Path]) -> str:
    """A benchmark file's sha256; a suite's, over its files' names and hashes."""
    if len(files) == 1 and files[0].is_file():
        return file_sha(files[0])
    return hashlib.sha256("".join(f"{p.name}\0{file_sha(p)}\n" for p in files).encode()).hexdigest()


def benchmark_record(bench) -> dict:
    """run.json's `benchmark`: where it is (a suite's spelling with its folder made absolute),
    its format and hash, and a suite's files."""
    from dscoder.evaluate.benchmarks import SUITE_8LANG

    if not bench.suite:
        path = str(bench.files[0].resolve())
    elif bench.name.startswith(SUITE_8LANG):
        path = SUITE_8LANG + str(Path(bench.name[len(SUITE_8LANG) :]).resolve())
    else:
        path = str(Path(bench.name).resolve())
    record = {"path": path, "format": bench.format, "sha256": benchmark_sha(bench.files)}
    return record | ({"files": [p.name for p in bench.files]} if bench.suite else {})


def run_record(bench, source: dict, cfg: ExecConfig, name: str | None = None) -> dict:
    """What run.json says of a run of `bench` (benchmarks.Benchmark). `source` is where the
    samples come from: {"model": folder, "generation": settings} or {"samples": file}. The
    isolation is `cfg.sandbox` until `execute` puts the mode it chose in its place."""
    execution = {
        "timeout": cfg.timeout,
        "memory_mb": cfg.memory_mb,
        "isolation": cfg.sandbox,
        "calibrate": cfg.calibrate,
    }
    return {
        "kind": "eval",
        "name": name,
        "benchmark": benchmark_record(bench),
        "source": source,
        "execution": execution,
        "software": manifest.software(),
        "machine": manifest.machine(),
        "started": manifest.now(),
    }


def _identity(record: dict) -> dict:
    """The parts of a run record that decide its results (the name and file paths do not)."""
    bench = record.get("benchmark") or {}
    return {
        "benchmark": {"format": bench.get("format"), "sha256": bench.get("sha256")},
        "source": record.get("source"),
        "execution": record.get("execution"),
    }


def _first_difference(old, new, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(new) + [k for k in old if k not in new]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
    return f"{where}: {json.dumps(old)} there, {json.dumps(new)} now"


def examine(out: Path, record: dict, force: bool = False) -> tuple[dict, bool]:
    """What `claim` would do with `out`, without writing: (the record, with the name the folder
    already has when `record` gives none; whether the folder's results must be dropped). A
    UserError when `out` holds another run's results and not `force`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    path = out / RUN
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: unreadable ({exc})") from None
        if _identity(old) != _identity(record):
            if not force:
                raise UserError(
                    f"{out} holds the results of another run ({_first_difference(_identity(old), _identity(record))}); "
                    "use --force to replace them, or another --out"
                )
            return record, True
        return ({**record, "name": old.get("name")} if record["name"] is None else record), False
    if (out / RESULTS).exists():
        if not force:
            raise UserError(
                f"{out} holds results of a run it does not describe (no {RUN}); "
                "use --force to replace them, or another --out"
            )
        return record, True
    return record, False


def claim(out: Path, record: dict, force: bool = False) -> dict:
    """Make `out` the results folder of the run `record` describes, before anything runs: a new
    or empty folder is taken; a folder of the same run is resumed (keeping its name unless
    `record` gives one); a folder of another run is refused unless `force`, which drops its
    results. Writes and returns the record."""
    record, drop = examine(out, record, force)
    if drop:
        _drop_results(Path(out))
    record = {**record, "name": record["name"] or _default_name(record["source"])}
    artifacts.write_json(Path(out) / RUN, record)
    return record


def _drop_results(out: Path) -> None:
    for name in (RESULTS, SUMMARY):
        (out / name).unlink(missing_ok=True)


def _default_name(source: dict) -> str:
    if "model" in source:
        folder = Path(source["model"])
        return folder.parent.name if folder.name == "final" else folder.name
    return Path(source.get("samples", "samples")).stem


# --- running ---------------------------------------------------------------------------------------


def known_samples(task_list: list[Task], samples: list[dict], where: str) -> list[dict]:
    """The samples of tasks in the benchmark (the rest skipped with a warning); a UserError when
    none are."""
    by_id = {t.task_id for t in task_list}
    samples = number_samples(samples)
    known = [s for s in samples if s["task_id"] in by_id]
    unknown = Counter(s["task_id"] for s in samples if s["task_id"] not in by_id)
    if not samples:
        raise UserError(f"{where}: no samples")
    if not known:
        raise UserError(
            f"{where}: none of its {len(samples)} samples belong to the benchmark (task ids like "
            f"{next(iter(unknown))!r}; the benchmark's are like {task_list[0].task_id!r})"
        )
    if unknown:
        log.warning(
            "skipped %d samples of %d unknown task ids (not in the benchmark, e.g. %s)",
            sum(unknown.values()),
            len(unknown),
            next(iter(unknown)),
        )
    return known


_warned: set[str] = set()  # missing toolchains already reported by this process


def check_toolchains(languages: set[str], mode: str) -> None:
    """Before any sample runs: every language that is installed starts in the sandbox (a
    UserError naming the tool otherwise); languages that are not installed are warned about
    (their samples are marked skipped); a UserError when none can run."""
    missing = {language: toolchains.missing(language) for language in sorted(languages)}
    for problem in filter(None, missing.values()):
        if problem not in _warned:
            _warned.add(problem)
            log.warning("%s (its samples are marked skipped)", problem)
    if all(missing.values()):
        raise UserError("no sample can run here: " + "; ".join(missing.values()))
    for language, problem in missing.items():
        if problem is None:
            failure = toolchains.probe(language, mode)
            if failure:
                raise UserError(f"--sandbox {mode}: {failure}")


def execute(
    task_list: list[Task],
    samples: list[dict],
    out: Path,
    cfg: ExecConfig,
    record: dict | None = None,
    force: bool = False,
) -> dict:
    """Run every sample of this run not yet in `out/results.jsonl`, then write the summary.
    `record` (from `run_record`; built from the samples when None) names the run the folder
    belongs to (see `claim`); everything is checked before anything is written."""
    samples = known_samples(task_list, samples, ((record or {}).get("source") or {}).get("samples", "samples"))
    by_id = {t.task_id: t for t in task_list}
    mode = sandbox.choose(cfg.sandbox, toolchains.readable_roots())
    check_toolchains({by_id[s["task_id"]].language for s in samples}, mode)
    if record is None:
        record = {
            "kind": "eval",
            "name": None,
            "benchmark": {"format": task_list[0].format},
            "source": {"samples": "in memory"},
            "execution": {"timeout": cfg.timeout, "memory_mb": cfg.memory_mb},
        }
    with hold(out):
        claim(out, {**record, "execution": {**record["execution"], "isolation": mode}}, force)
        return run_claimed(task_list, samples, out, cfg, mode)


@contextmanager
def hold(out: Path):
    """Hold the results folder `out` for this process: a second command into the same folder is
    refused, not mixed in."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    artifacts.make_folder(out)
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another dscoder command is writing into this folder") from None
        yield


def run_claimed(task_list: list[Task], samples: list[dict], out: Path, cfg: ExecConfig, mode: str) -> dict:
    """`execute` once its checks are done and `out` is held and claimed for this run."""
    workers = cfg.workers or max(1, len(os.sched_getaffinity(0)))
    if any(t.format in plus.FORMATS for t in task_list):  # expected outputs of the canonical solutions
        task_list = plus.prepare(task_list, {s["task_id"] for s in samples}, out, mode, workers, cfg.memory_mb)
    by_id = {t.task_id: t for t in task_list}
    (out / SUMMARY).unlink(missing_ok=True)  # until this run's is written, there is none
    results_path = out / RESULTS
    wanted = {(s["task_id"], s["completion_id"], sample_sha(s["completion"])) for s in samples}
    kept = [
        r
        for r in _read_results(results_path)
        if (r.get("task_id"), r.get("completion_id"), r.get("sample_sha")) in wanted
    ]
    artifacts.write_text(results_path, "".join(json.dumps(r) + "\n" for r in kept))
    done = {(r["task_id"], r["completion_id"]) for r in kept}
    todo = [s for s in samples if (s["task_id"], s["completion_id"]) not in done]
    if done:
        log.info("%s: %d results reused, %d samples to run", out, len(done), len(todo))
    slots: queue.Queue = queue.Queue()
    for slot in range(workers):
        slots.put(slot)
    cache_dir = out / ".build-cache"
    cache_dir.mkdir(exist_ok=True)

    workers_by_slot: dict[int, sandbox.PythonWorker] = {}

    def python_worker(slot: int) -> sandbox.PythonWorker | None:
        if mode == "none":
            return None
        worker = workers_by_slot.get(slot)
        if worker is None or not worker.alive():
            if worker is not None:
                worker.close()
            worker = workers_by_slot[slot] = sandbox.PythonWorker(slot, toolchains.readable_roots(), mode)
        return worker

    def one(sample: dict, run_cfg: ExecConfig) -> dict:
        slot = slots.get()
        try:
            task = by_id[sample["task_id"]]
            worker = python_worker(slot) if task.language == "python" else None
            try:
                outcome = run_sample(task, sample["completion"], run_cfg, mode, slot, cache_dir, worker)
            except RuntimeError:  # the fork server died (it is restarted): run this one on its own
                outcome = run_sample(task, sample["completion"], run_cfg, mode, slot, cache_dir)
        finally:
            slots.put(slot)
        return {
            "task_id": sample["task_id"],
            "completion_id": sample["completion_id"],
            "sample_sha": sample_sha(sample["completion"]),
            "language": task.language,
            **outcome,
        }

    factor = _load_factor(cfg, mode, workers, fresh=False) if todo else 1.0

    from dscoder.console import progress

    try:
        # unbuffered: a row is on disk once written, and a full disk fails that write, not a later flush
        with (
            open(results_path, "ab", buffering=0) as f,
            ThreadPoolExecutor(workers) as pool,
            progress(total=len(todo), desc="executing", unit=" samples") as bar,
        ):
            for row in pool.map(lambda sample: one(sample, replace(cfg, timeout=cfg.timeout * factor)), todo):
                try:
                    f.write((json.dumps(row) + "\n").encode())
                except OSError as exc:  # a full disk: what was written stays, and the same command resumes
                    raise UserError(
                        f"{results_path}: cannot be written ({exc.strerror or exc}); the results "
                        "so far are kept: make room and run the same command again"
                    ) from None
                bar.update()
            # load that came during the run: timeouts run again if the machine has become slower
            keys = {(s["task_id"], s["completion_id"]) for s in todo}
            timed_out = [
                r
                for r in _read_results(results_path)
                if r["status"] == "timeout" and (r["task_id"], r["completion_id"]) in keys
            ]
            later = _load_factor(cfg, mode, workers, fresh=True) if timed_out else factor
            if later > factor * 1.25:
                log.info(
                    "this machine became slower during the run (load factor %.2f, was %.2f): running the %d "
                    "samples that timed out again",
                    later,
                    factor,
                    len(timed_out),
                )
                factor = later
                retry = {(r["task_id"], r["completion_id"]) for r in timed_out}
                again = [s for s in todo if (s["task_id"], s["completion_id"]) in retry]
                rows = {
                    (r["task_id"], r["completion_id"]): r
                    for r in pool.map(lambda sample: one(sample, replace(cfg, timeout=cfg.timeout * factor)), again)
                }
                artifacts.write_text(
                    results_path,
                    "".join(
                        json.dumps(rows.get((r["task_id"], r["completion_id"]), r)) + "\n"
                        for r in _read_results(results_path)
                    ),
                )
    finally:
        for worker in workers_by_slot.values():
            worker.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
    summary = summarize(task_list, samples, _read_results(results_path), mode)
    summary["load_factor"] = round(factor, 2)
    summary["timeout_seconds"] = round(cfg.timeout * factor, 2)
    artifacts.write_json(out / SUMMARY, summary)
    record = json.loads((out / RUN).read_text(encoding="utf-8"))
    artifacts.write_json(out / RUN, {**record, "finished": manifest.now()})
    return summary


def _load_factor(cfg: ExecConfig, mode: str, workers: int, fresh: bool) -> float:
    """The factor the time limits are scaled by (1 without calibration), logged."""
    if not cfg.calibrate:
        return 1.0
    factor = sandbox.load_factor(mode, toolchains.readable_roots(), workers, max_age=0 if fresh else 60)
    if not fresh:
        log.info(
            "load factor %.2f: each program may run %.1f s (--timeout %g on the reference machine)",
            factor,
            cfg.timeout * factor,
            cfg.timeout,
        )
    return factor


def _read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash is run again
        if isinstance(row, dict):
            rows.append(row)
    return rows


def summarize(task_list: list[Task], samples: list[dict], results: list[dict], isolation: str) -> dict:
    """pass@k per language and overall, statuses, coverage and FIM line scores."""
    by_id = {t.task_id: t for t in task_list}
    per_task: dict[str, list[bool]] = defaultdict(list)
    base_per_task: dict[str, list[bool]] = defaultdict(list)  # HumanEval+/MBPP+: the base tests alone
    statuses: Counter = Counter()
    for r in results:
        if r["task_id"] in by_id and r["status"] != "skipped":
            per_task[r["task_id"]].append(bool(r["passed"]))
            if "base_passed" in r:
                base_per_task[r["task_id"]].append(bool(r["base_passed"]))
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

    summary = {
        "overall": scores([c for counts in by_language.values() for c in counts]),
        "languages": {lang: scores(counts) for lang, counts in sorted(by_language.items())},
        "statuses": dict(statuses),
        "isolation": isolation,
        "tasks_in_benchmark": len(task_list),
    }
    if len(by_language) > 1:  # the published multilingual rows average the languages' scores
        firsts = [row.get("pass@1") for row in summary["languages"].values()]
        if None not in firsts:
            summary["language_mean"] = {"languages": len(firsts), "pass@1": sum(firsts) / len(firsts)}
    by_difficulty: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for task_id, passed in per_task.items():
        if by_id[task_id].format == "leetcode":
            by_difficulty[by_id[task_id].record["meta"]["difficulty"]].append((len(passed), sum(passed)))
    if by_difficulty:  # LeetCode Contest reports Easy, Medium and Hard beside the overall score
        summary["difficulties"] = {d: scores(by_difficulty[d]) for d in DIFFICULTIES if d in by_difficulty}
    if base_per_task:  # `overall` is the plus score (base and plus tests), as evalplus's humaneval+ / mbpp+
        summary["base"] = scores([(len(p), sum(p)) for p in base_per_task.values()])
    missing_blocks = sum(bool(s.get("no_code_block")) for s in samples)
    if missing_blocks:  # instruct answers without a code block (scored as the prompt plus the answer)
        summary["answers_without_code_block"] = missing_blocks
    references = [
        (s, by_id[s["task_id"]])
        for s in samples
        if s["task_id"] in by_id and by_id[s["task_id"]].suffix is not None and by_id[s["task_id"]].reference
    ]
    if references:
        lines = [metrics.line_scores(s["completion"], t.reference) for s, t in references]
        summary["fim"] = {
            "line_exact_match": sum(e for e, _ in lines) / len(lines),
            "edit_similarity": sum(v for _, v in lines) / len(lines),
            "samples": len(lines),
        }
    return summary
