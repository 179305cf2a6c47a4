"""`dscoder data build`: plan, process units, deduplicate, finalize, resuming at every stage.

```
DIR/work/plan.json                 inputs, resolved config and the units of work
DIR/work/buckets/                  dataset rows spilled by repository (datasets only)
DIR/work/decontam.{npz,json}       the benchmark n-gram index
DIR/work/units/unit-NNNNN.*        per unit: samples, rejects, signatures, digests; stats last
DIR/work/dedup.npz                 survivors of exact and near dedup
```
Every file is written whole or not at all (artifacts.py), and a unit's stats file is written
last, so a unit is either done or redone whole. After a kill, the same command continues where
the last run stopped and finishes with the output an uninterrupted run gives. The finished
corpus is described in `corpus.py`; `work/` is set aside whole, then removed, at the end, and
the half-written files of a killed finish are cleared when it is redone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dscoder import __version__, artifacts
from dscoder.config import to_dict
from dscoder.console import progress
from dscoder.data import corpus, dedup
from dscoder.data.dataset_files import is_dataset_file, read_bucket, spill
from dscoder.data.decontam import build_index, load_index, save_index
from dscoder.data.executors import default_workers, run_local, run_ray
from dscoder.data.stats import Stats, nothing_kept
from dscoder.data.steps import BuildConfig, failed_repository, process_repository
from dscoder.errors import UserError
from dscoder.repo.collect import is_archive, read_repository, repository_name

FINISHED = ".work.finished"  # the work folder of a finished build, set aside to be deleted

log = logging.getLogger("dscoder")


# --- planning ------------------------------------------------------------------------------------

def resolve_sources(sources: list[Path], repos_in: list[Path]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(path, name)] repositories, [dataset files]) in a stable order; names made unique."""
    repos: list[Path] = []
    datasets: list[str] = []
    for folder in repos_in:
        if not folder.is_dir():
            raise UserError(f"--repos-in {folder}: not a folder")
        repos += sorted(p for p in folder.iterdir() if p.is_dir() or is_archive(p))
    for source in sources:
        if not source.exists():
            raise UserError(f"source not found: {source}")
        if is_dataset_file(source):
            datasets.append(str(source.resolve()))
        elif source.is_dir() or is_archive(source):
            repos.append(source)
        else:
            raise UserError(f"{source}: not a folder, git repository, archive (.tar, .tar.gz, .zip) or dataset file (.parquet, .jsonl)")
    named, seen = [], Counter()
    for path in repos:
        name = repository_name(path)
        seen[name] += 1
        named.append((str(path.resolve()), name if seen[name] == 1 else f"{name}~{seen[name]}"))
    return named, datasets


def _plan_identity(cfg: BuildConfig, repos, datasets, benchmarks) -> dict:
    settings = to_dict(cfg)
    settings["run"].pop("workers")  # how many processes ran it does not change the result
    return {"config": settings, "repositories": repos, "datasets": datasets, "decontaminate": benchmarks}


def prepare(out: Path, identity: dict) -> bool:
    """Check `out` before a build: True when a matching unfinished build is there to resume."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if not out.exists():
        return False
    if corpus.is_corpus(out):
        if json.loads((out / corpus.MANIFEST).read_text(encoding="utf-8")).get("complete"):
            shutil.rmtree(out / FINISHED, ignore_errors=True)  # left by a kill just after the end
            raise UserError(f"{out} already holds a finished corpus (use --force to rebuild it)")
        plan = out / "work" / "plan.json"
        if plan.is_file() and json.loads(plan.read_text(encoding="utf-8"))["identity"] != identity:
            raise UserError(f"{out} holds an unfinished build with other inputs or settings (use --force to start over)")
        return True
    if any(out.iterdir()):
        raise UserError(f"{out} already exists and is not a corpus build (use --force to replace it)")
    return False


def plan_units(work: Path, cfg: BuildConfig, repos, datasets, skips: Counter) -> list[dict]:
    units = [{"kind": "repos", "items": repos[i:i + cfg.run.repos_per_unit]}
             for i in range(0, len(repos), cfg.run.repos_per_unit)]
    if datasets:
        done = work / "buckets.done"
        if not done.is_file():
            shutil.rmtree(work / "buckets", ignore_errors=True)
            size = sum(Path(d).stat().st_size * (3 if d.endswith(".parquet") else 1) for d in datasets)
            count = max(1, math.ceil(size / cfg.run.bucket_bytes))
            log.info("spilling %d dataset file(s) into %d bucket(s) by repository", len(datasets), count)
            spilled: Counter = Counter()
            spill([Path(d) for d in datasets], work / "buckets", count, spilled)
            artifacts.write_json(done, {"skipped": dict(spilled)})
        skips.update(json.loads(done.read_text())["skipped"])
        units += [{"kind": "bucket", "path": str(p)} for p in sorted((work / "buckets").glob("bucket-*.jsonl.gz"))]
    for index, unit in enumerate(units):
        unit["index"] = index
    return units


# --- one unit --------------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def _bench(path: str | None):
    return load_index(Path(path)) if path else None


def unit_path(work: Path, index: int, suffix: str) -> Path:
    return work / "units" / f"unit-{index:05d}.{suffix}"


def run_unit(unit: dict, cfg: BuildConfig, work: str, bench_path: str | None) -> None:
    """Process one unit (a few repositories or a dataset bucket); a finished unit is skipped."""
    work = Path(work)
    if unit_path(work, unit["index"], "stats.json").is_file():
        return
    stats, skips = Stats(), Counter()
    if unit["kind"] == "repos":
        repos = [read_repository(Path(path), cfg.collect, skips, name) for path, name in unit["items"]]
    else:
        repos = read_bucket(Path(unit["path"]), cfg.collect, skips)
    stats.skipped.update(skips)
    samples, rejects = [], []
    for repo in repos:
        if repo is None:
            continue
        try:
            repo_samples, repo_rejects = process_repository(repo, cfg, _bench(bench_path), stats)
        except Exception as exc:  # one broken repository must not stop the build
            repo_samples, repo_rejects = [], failed_repository(repo, exc, stats)
        samples += repo_samples
        rejects += repo_rejects
    signatures = np.stack([dedup.signature(s["text"], cfg.dedup) for s in samples]) if samples \
        else np.empty((0, cfg.dedup.num_perm), dtype=np.uint32)
    digests = np.frombuffer(b"".join(dedup.text_digest(s["text"]) for s in samples), dtype=np.uint8).reshape(-1, 16)
    corpus.write_table(samples, corpus.SAMPLES, unit_path(work, unit["index"], "samples.parquet"))
    corpus.write_table(rejects, corpus.REJECTS, unit_path(work, unit["index"], "rejects.parquet"))
    artifacts.write_array(unit_path(work, unit["index"], "sig.npy"), signatures)
    artifacts.write_array(unit_path(work, unit["index"], "digest.npy"), digests)
    artifacts.write_json(unit_path(work, unit["index"], "stats.json"), stats.to_json())


# --- dedup and finish ---------------------------------------------------------------------------------

def deduplicate(work: Path, units: list[dict], cfg: BuildConfig) -> dict:
    """Cluster every sample of the build; the result is saved so it is computed once."""
    result = work / "dedup.npz"
    if result.is_file():
        with np.load(result) as data:
            return {k: data[k] for k in data.files}
    sigs = [np.load(unit_path(work, u["index"], "sig.npy"), mmap_mode="r") for u in units]
    digests = [np.load(unit_path(work, u["index"], "digest.npy")) for u in units]
    sizes = np.array([len(s) for s in sigs], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    n = int(offsets[-1])
    if n == 0 or not cfg.dedup.enabled:
        roots, similarity = np.arange(n), np.zeros(n, dtype=np.float32)
    else:
        log.info("deduplicating %d samples (%d bands x %d rows, threshold %.2f)", n, cfg.dedup.bands,
                 cfg.dedup.rows, cfg.dedup.threshold)

        def band_keys(band: int) -> np.ndarray:
            return np.concatenate([dedup.band_keys(np.asarray(s), cfg.dedup, band) for s in sigs])

        def rows(indices: np.ndarray) -> np.ndarray:
            unit = np.searchsorted(offsets, indices, side="right") - 1
            return np.stack([sigs[u][i - offsets[u]] for u, i in zip(unit, indices)])

        empty = np.concatenate([np.asarray(s[:, 0]) == dedup.EMPTY for s in sigs])
        roots, similarity = dedup.cluster(n, np.concatenate(digests), band_keys, rows, empty, cfg.dedup,
                                          progress=lambda it: progress(it, desc="dedup bands"))
    artifacts.write_arrays(result, roots=roots, similarity=similarity, offsets=offsets)
    return {"roots": roots, "similarity": similarity, "offsets": offsets}


def finalize(out: Path, work: Path, units: list[dict], decisions: dict, manifest: dict, skips: Counter) -> Stats:
    """Write the final shards, rejects, clusters and stats from the units and dedup decisions."""
    roots, similarity, offsets = decisions["roots"], decisions["similarity"], decisions["offsets"]
    for folder in ("data", "rejects", "dedup"):  # all rewritten: what a killed finish left goes
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir()
    duplicated = np.flatnonzero(roots != np.arange(len(roots)))
    named = set(duplicated.tolist()) | set(roots[duplicated].tolist())  # ids the clusters need
    total, ids_by_index = Stats(), {}
    total.skipped.update(skips)
    clusters: dict[int, list[int]] = {}
    for u in units:
        i = u["index"]
        total.add(Stats.from_json(json.loads(unit_path(work, i, "stats.json").read_text())))
        table = pq.read_table(unit_path(work, i, "samples.parquet"))
        rows = table.to_pylist()
        keep, dropped = [], []
        for j, row in enumerate(rows):
            g = int(offsets[i]) + j
            if g in named:
                ids_by_index[g] = row["id"]
            if roots[g] == g:
                keep.append(row)
            else:
                clusters.setdefault(int(roots[g]), []).append(g)
                dropped.append((row, g))
        if keep:
            corpus.write_table(keep, corpus.SAMPLES, out / "data" / f"part-{i:05d}.parquet")
        total.counts["samples_kept"] += len(keep)
        rejects = pq.read_table(unit_path(work, i, "rejects.parquet")).to_pylist()
        for row, g in dropped:
            exact = similarity[g] >= 1.0
            reason = "exact_duplicate" if exact else "near_duplicate"
            for language in row["languages"]:
                total.drop("dedup", reason, language, row["n_chars"] // len(row["languages"]), files=row["n_files"])
            rejects.append({"repo": row["repo"], "path": ",".join(row["paths"]), "language": ",".join(row["languages"]),
                            "step": "dedup", "reason": reason, "detail": f"duplicate of {ids_by_index[int(roots[g])]}", "text": row["text"],
                            "n_chars": row["n_chars"], "source": row["source"]})
        if rejects:
            corpus.write_table(rejects, corpus.REJECTS, out / "rejects" / f"part-{i:05d}.parquet")
    with artifacts.output_file(out / "dedup" / "clusters.jsonl", force=True) as f:
        for root in sorted(clusters):
            members = [{"id": ids_by_index[g], "similarity": round(float(similarity[g]), 4)} for g in clusters[root]]
            f.write(json.dumps({"survivor": ids_by_index[root], "duplicates": members}) + "\n")
    total.counts["duplicate_clusters"] = len(clusters)
    artifacts.write_json(out / "stats.json", total.to_json())
    return total


def _benchmark_strings(files: list[Path]) -> list[tuple[str, str]]:
    """The strings of the `--decontaminate` files that training data must not contain."""
    from dscoder.benchmark_files import contaminating_strings

    strings = []
    for path in files:
        fmt, found = contaminating_strings(path)
        strings += [(f"{path.name}:{owner}", text) for owner, text in found]
        log.info("decontamination: %s (%s, %d strings)", path.name, fmt, len(found))
    return strings


def build(out: Path, sources: list[Path], repos_in: list[Path], decontaminate: list[Path], cfg: BuildConfig,
          engine: str = "local", ray_address: str | None = None, force: bool = False) -> Stats:
    """Build (or resume building) the corpus `out` from the sources."""
    dedup.check(cfg.dedup)
    repos, datasets = resolve_sources(sources, repos_in)
    if not repos and not datasets:
        raise UserError("no sources given (name repositories, dataset files or --repos-in folders)")
    if engine not in ("local", "ray"):
        raise UserError(f"unknown engine {engine!r} (expected local or ray)")
    benchmarks = [str(p.resolve()) for p in decontaminate]
    strings = _benchmark_strings(decontaminate)  # every file read (and checked) before anything is written
    identity = json.loads(json.dumps(_plan_identity(cfg, repos, datasets, benchmarks)))  # as stored
    final, out = out, _build_folder(out, identity, force)
    resuming = prepare(out, identity)
    work = out / "work"
    if (out / FINISHED).is_dir() and not work.exists():  # killed after the finish, before the manifest
        manifest = json.loads((out / corpus.MANIFEST).read_text(encoding="utf-8"))
        _complete(out, manifest)
        if out != final:
            artifacts.publish_dir(out, final)
        return Stats.from_json(json.loads((out / "stats.json").read_text(encoding="utf-8")))
    artifacts.make_folder(work / "units")
    manifest = {"kind": "corpus", "dscoder_version": __version__, "complete": False, **identity,
                "engine": engine, "workers": cfg.run.workers or default_workers()}
    artifacts.write_json(out / corpus.MANIFEST, manifest)

    bench_path = None
    if benchmarks:
        bench_path = work / "decontam"
        if not bench_path.with_suffix(".json").is_file():
            save_index(build_index(strings, cfg.decontam), bench_path)
        bench_path = str(bench_path)

    plan = work / "plan.json"
    skips: Counter = Counter()
    if plan.is_file():
        units = json.loads(plan.read_text(encoding="utf-8"))["units"]
        skips.update(json.loads(plan.read_text(encoding="utf-8"))["skipped"])
    else:
        units = plan_units(work, cfg, repos, datasets, skips)
        artifacts.write_json(plan, {"identity": identity, "units": units, "skipped": dict(skips)})
    pending = [u for u in units if not unit_path(work, u["index"], "stats.json").is_file()]
    log.info("%s: %d repositories, %d dataset file(s), %d units (%d to do)", "resuming" if resuming else "building",
             len(repos), len(datasets), len(units), len(pending))
    workers = cfg.run.workers or default_workers()
    args = (cfg, str(work), bench_path)
    if engine == "ray":
        run_ray(run_unit, pending, args, workers, "units", ray_address)
    else:
        run_local(run_unit, pending, args, workers, "units")

    decisions = deduplicate(work, units, cfg)
    if int(decisions["offsets"][-1]) == 0:  # an empty corpus is an error, not a result
        total = Stats()
        total.skipped.update(skips)
        for u in units:
            total.add(Stats.from_json(json.loads(unit_path(work, u["index"], "stats.json").read_text())))
        shutil.rmtree(out)
        raise UserError(f"no sample was kept, so no corpus was written ({nothing_kept(total.to_json())})")
    stats = finalize(out, work, units, decisions, manifest, skips)
    _complete(out, manifest)
    if out != final:
        artifacts.publish_dir(out, final)
    return stats


def _complete(out: Path, manifest: dict) -> None:
    """Mark the finished corpus complete and drop its work folder, in an order a kill at any
    point leaves resumable: the work folder is first set aside whole (a half-deleted one would
    read as units to trust), then the manifest says complete, then the set-aside folder goes."""
    if (out / "work").exists():
        shutil.rmtree(out / FINISHED, ignore_errors=True)
        os.replace(out / "work", out / FINISHED)
    artifacts.write_json(out / corpus.MANIFEST, {**manifest, "complete": True})
    artifacts.remove_partials(out)  # of files at the top written by a killed run
    shutil.rmtree(out / FINISHED)


def _build_folder(out: Path, identity: dict, force: bool) -> Path:
    """Where the build happens: `out` itself, or with `--force` over an existing folder, a hidden
    sibling that replaces it once the new corpus is finished (resumed when the same rebuild was
    interrupted), so a failed or interrupted rebuild never costs the old corpus."""
    if not (force and out.exists()):
        return out
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    rebuild = out.parent / f".{out.name}.rebuild"
    try:
        prepare(rebuild, identity)
    except UserError:  # another rebuild's leftovers
        shutil.rmtree(rebuild)
    return rebuild
