"""`dscoder data build`: plan, process units, deduplicate, finalize, resuming at every stage.

```
DIR/work/plan.json                 inputs, resolved config and the units of work
DIR/work/spill/file-NNNNN.spill    one dataset file's rows by bucket (by repository), indexed
DIR/work/decontam.{npz,json}       the benchmark n-gram index
DIR/work/units/unit-NNNNN.*        per unit: samples, rejects, signatures, digests; stats last
DIR/work/units/unit-NNNNN.keys.npy dedup candidate records of a unit, by key range (bounds.npy)
DIR/work/dedup/pairs-NNNNN.npy     the duplicate pairs found in one key range
DIR/work/dedup/{dropped,clusters}.npy  every dropped sample with its survivor, by sample and by survivor
DIR/work/units/unit-NNNNN.finished.json  a unit's shards written (its dedup stats)
```
Every stage is a set of tasks on the executor (local processes or Ray). Every file is written
whole or not at all (artifacts.py), and each task writes its mark last, so a task is either done
or redone whole. After a kill, the same command continues where
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
from dscoder.data import corpus, dedup
from dscoder.data.dataset_files import (
    check_dataset_file,
    dataset_bytes,
    is_dataset_file,
    read_bucket,
    spill,
    spill_skips,
)
from dscoder.data.decontam import build_index, load_index, save_index
from dscoder.data.dedup import DedupConfig
from dscoder.data.executors import Executor, default_workers, peak_memory_mb
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
            check_dataset_file(source)
            datasets.append(str(source.resolve()))
        elif source.is_dir() or is_archive(source):
            repos.append(source)
        else:
            raise UserError(
                f"{source}: not a folder, git repository, archive (.tar, .tar.gz, .zip) or dataset file (.parquet, .jsonl)"
            )
    named, seen = [], Counter()
    for path in repos:
        name = repository_name(path)
        seen[name] += 1
        named.append((str(path.resolve()), name if seen[name] == 1 else f"{name}~{seen[name]}"))
    return named, datasets


def _plan_identity(cfg: BuildConfig, repos, datasets, benchmarks) -> dict:
    settings = to_dict(cfg)
    for name in ("workers", "shuffle_bytes"):  # how the work is spread does not change the result
        settings["run"].pop(name)
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
            raise UserError(
                f"{out} holds an unfinished build with other inputs or settings (use --force to start over)"
            )
        return True
    if any(out.iterdir()):
        artifacts.check_replaceable(out)
        raise UserError(f"{out} already exists and is not a corpus build (use --force to replace it)")
    return False


def spill_path(work: Path, number: int) -> Path:
    return work / "spill" / f"file-{number:05d}.spill"


def spill_dataset(item: dict, work: str, buckets: int) -> float:
    """Spill one dataset file into buckets by repository, in one file of its own; a spill file
    that is missing or cut short is spilled again from the start."""
    work = Path(work)
    _check_visible(work)
    target = spill_path(work, item["number"])
    if spill_skips(target) is None:
        spill(Path(item["path"]), item["number"], target, buckets)
    return peak_memory_mb()


def plan_units(work: Path, cfg: BuildConfig, repos, datasets, skips: Counter, execute) -> list[dict]:
    units = [
        {"kind": "repos", "items": repos[i : i + cfg.run.repos_per_unit]}
        for i in range(0, len(repos), cfg.run.repos_per_unit)
    ]
    if datasets:
        size = sum(dataset_bytes(Path(d)) for d in datasets)
        count = max(1, math.ceil(size / cfg.run.bucket_bytes))
        log.info("spilling %d dataset file(s) into %d bucket(s) by repository", len(datasets), count)
        execute(
            "spilling datasets",
            spill_dataset,
            [{"path": d, "number": k} for k, d in enumerate(datasets)],
            (str(work), count),
        )
        for k in range(len(datasets)):
            skips.update(spill_skips(spill_path(work, k)))
        units += [{"kind": "bucket", "bucket": b, "files": len(datasets)} for b in range(count)]
    for index, unit in enumerate(units):
        unit["index"] = index
    return units


# --- one unit --------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _bench(path: str | None):
    return load_index(Path(path)) if path else None


def unit_path(work: Path, index: int, suffix: str) -> Path:
    return work / "units" / f"unit-{index:05d}.{suffix}"


def _read_source(path: Path, name: str, cfg: BuildConfig, skips: Counter):
    """A repository of the plan, read again (up to 3 times) when files vanish while it is read;
    one that is gone altogether stops the build rather than leave a smaller corpus."""
    for attempt in range(3):
        if not path.exists():
            raise UserError(
                f"{path}: the repository vanished during the build (it was there when the build "
                "started); restore it and run the same command again"
            )
        found: Counter = Counter()
        repo = read_repository(path, cfg.collect, found, name)
        if not found["unreadable"] or attempt == 2:
            skips.update(found)
            return repo
        log.info("%s: %d file(s) vanished while it was read; reading it again", path, found["unreadable"])


def run_unit(unit: dict, cfg: BuildConfig, work: str, bench_path: str | None) -> float:
    """Process one unit (a few repositories or a dataset bucket); a finished unit is skipped."""
    work = Path(work)
    _check_visible(work)
    if unit_path(work, unit["index"], "stats.json").is_file():
        return peak_memory_mb()
    stats, skips = Stats(), Counter()
    if unit["kind"] == "repos":
        repos = [_read_source(Path(path), name, cfg, skips) for path, name in unit["items"]]
    else:
        repos = read_bucket([spill_path(work, k) for k in range(unit["files"])], unit["bucket"], cfg.collect, skips)
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
    signatures = (
        np.stack([dedup.signature(s["text"], cfg.dedup) for s in samples])
        if samples
        else np.empty((0, cfg.dedup.num_perm), dtype=np.uint32)
    )
    digests = np.frombuffer(b"".join(dedup.text_digest(s["text"]) for s in samples), dtype=np.uint8).reshape(-1, 16)
    corpus.write_table(samples, corpus.SAMPLES, unit_path(work, unit["index"], "samples.parquet"))
    corpus.write_table(rejects, corpus.REJECTS, unit_path(work, unit["index"], "rejects.parquet"))
    artifacts.write_array(unit_path(work, unit["index"], "sig.npy"), signatures)
    artifacts.write_array(unit_path(work, unit["index"], "digest.npy"), digests)
    artifacts.write_json(unit_path(work, unit["index"], "stats.json"), stats.to_json())
    return peak_memory_mb()


# --- dedup: keys, pairs, clusters ----------------------------------------------------------------
# Each unit's candidate records (dedup.key_records) are written sorted by a hash range of their
# key, so that one task per range sees every record of its keys and finds their duplicate pairs
# alone; the driver then joins the pairs into clusters (a few numbers per sample) and writes the
# dropped samples and the clusters for the finishing tasks. Nothing in the driver grows with the
# size of a sample, its signature or its band keys.


def _check_visible(work: Path) -> None:
    """A task on a machine that cannot see the build folder stops with one line (a Ray node
    without the shared filesystem), never writes elsewhere."""
    if not work.is_dir():
        import socket

        raise UserError(
            f"{socket.gethostname()}: cannot see the build folder {work} (every node of a "
            "cluster needs it on a shared filesystem at the same path)"
        )


def unit_offsets(work: Path, units: list[dict]) -> np.ndarray:
    """Where each unit's samples start in the build's order, and the total last, from the
    signature files' headers. (U + 1,) int64"""
    sizes = [np.load(unit_path(work, u["index"], "sig.npy"), mmap_mode="r").shape[0] for u in units]
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))


def key_unit(unit: dict, cfg: DedupConfig, work: str, partitions: int) -> float:
    """One unit's candidate records, ordered by the hash range (partition) of their key."""
    work = Path(work)
    _check_visible(work)
    target = unit_path(work, unit["index"], "keys.npy")
    if not target.is_file():
        signatures = np.load(unit_path(work, unit["index"], "sig.npy"))
        digests = np.load(unit_path(work, unit["index"], "digest.npy"))
        records = dedup.key_records(signatures, digests, unit["offset"], cfg)
        share = records["hi"] % np.uint64(partitions)
        order = np.argsort(share, kind="stable")
        bounds = np.searchsorted(share[order], np.arange(partitions + 1), side="left")
        artifacts.write_array(unit_path(work, unit["index"], "bounds.npy"), bounds.astype(np.int64))
        artifacts.write_array(target, records[order])  # written last: the unit's marker
    return peak_memory_mb()


def pair_partition(partition: int, cfg: DedupConfig, work: str, units: list[int], offsets: list[int]) -> float:
    """The duplicate pairs among the records of one key range, from every unit. The records are
    read into one array made to size (no list of parts joined into a copy), and sorted by
    `dedup.candidate_pairs` without another copy of them."""
    work = Path(work)
    _check_visible(work)
    target = work / "dedup" / f"pairs-{partition:05d}.npy"
    if target.is_file():
        return peak_memory_mb()
    ranges = [np.load(unit_path(work, index, "bounds.npy"))[partition : partition + 2] for index in units]
    records = np.empty(int(sum(hi - lo for lo, hi in ranges)), dtype=dedup.KEY)
    filled = 0
    for index, (lo, hi) in zip(units, ranges):
        if hi > lo:
            records[filled : filled + hi - lo] = np.load(unit_path(work, index, "keys.npy"), mmap_mode="r")[lo:hi]
            filled += hi - lo
    starts = np.asarray(offsets, dtype=np.int64)
    signatures = {}

    def rows(indices: np.ndarray) -> np.ndarray:
        """The signatures of samples `indices`, read unit by unit. (k,) -> (k, num_perm)"""
        owner = np.searchsorted(starts, indices, side="right") - 1
        out = np.empty((len(indices), cfg.num_perm), dtype=np.uint32)
        for u in np.unique(owner).tolist():
            if u not in signatures:
                signatures[u] = np.load(unit_path(work, units[u], "sig.npy"), mmap_mode="r")
            mine = owner == u
            out[mine] = signatures[u][indices[mine] - starts[u]]
        return out

    artifacts.write_array(target, dedup.candidate_pairs(records, rows, cfg))
    return peak_memory_mb()


def deduplicate(work: Path, units: list[dict], cfg: BuildConfig, execute, offsets: np.ndarray) -> int:
    """Find the duplicates of the whole build; writes `dedup/dropped.npy` (every dropped sample,
    by index) and `dedup/clusters.npy` (the same, by survivor) for the finishing tasks. Returns
    the number of samples."""
    folder = work / "dedup"
    n = int(offsets[-1])
    if (folder / "clusters.npy").is_file():
        return n
    artifacts.make_folder(folder)
    if n and cfg.dedup.enabled:
        plan = folder / "partitions.json"  # fixed once chosen: the unit key files depend on it
        if not plan.is_file():
            records = n * (dedup.banding(cfg.dedup)[0] + 1)
            artifacts.write_json(
                plan, {"partitions": max(1, math.ceil(records * dedup.KEY.itemsize / cfg.run.shuffle_bytes))}
            )
        partitions = json.loads(plan.read_text())["partitions"]
        log.info(
            "deduplicating %d samples (%d bands x %d rows, threshold %.2f) in %d key range(s)",
            n,
            *dedup.banding(cfg.dedup),
            cfg.dedup.threshold,
            partitions,
        )
        execute(
            "dedup keys",
            key_unit,
            [dict(u, offset=int(o)) for u, o in zip(units, offsets)],
            (cfg.dedup, str(work), partitions),
        )
        execute(
            "dedup pairs",
            pair_partition,
            list(range(partitions)),
            (cfg.dedup, str(work), [u["index"] for u in units], offsets.tolist()),
        )
        roots, similarity = dedup.clusters(n, (np.load(folder / f"pairs-{p:05d}.npy") for p in range(partitions)))
    else:
        roots, similarity = np.arange(n), np.zeros(n, dtype=np.float32)
    member = np.flatnonzero(roots != np.arange(n))
    dropped = np.empty(len(member), dtype=DROPPED)
    dropped["member"], dropped["root"], dropped["sim"] = member, roots[member], similarity[member]
    artifacts.write_array(folder / "dropped.npy", dropped)
    artifacts.write_array(folder / "clusters.npy", dropped[np.lexsort((dropped["member"], dropped["root"]))])
    return n


DROPPED = np.dtype([("member", "<i8"), ("root", "<i8"), ("sim", "<f4")])


# --- finish: one task per unit ----------------------------------------------------------------------


@lru_cache(maxsize=64)
def _unit_ids(work: str, index: int) -> list[str]:
    return pq.read_table(unit_path(Path(work), index, "samples.parquet"), columns=["id"]).column("id").to_pylist()


def finish_unit(unit: dict, work: str, out: str, indices: list[int], offsets: list[int]) -> float:
    """Write one unit's shards, rejects (with its dropped duplicates) and the lines of the
    clusters whose survivor is in it; its stats last (the unit's marker)."""
    work, out, i = Path(work), Path(out), unit["index"]
    _check_visible(work)
    marker = unit_path(work, i, "finished.json")
    if marker.is_file():
        return peak_memory_mb()
    first, last = offsets[unit["number"]], offsets[unit["number"] + 1]

    def sample_id(g: int) -> str:
        u = int(np.searchsorted(offsets, g, side="right")) - 1
        return _unit_ids(str(work), indices[u])[g - offsets[u]]

    dropped = np.load(work / "dedup" / "dropped.npy", mmap_mode="r")
    mine = dropped[np.searchsorted(dropped["member"], first) : np.searchsorted(dropped["member"], last)]
    gone = {int(m): (int(r), float(s)) for m, r, s in zip(mine["member"], mine["root"], mine["sim"])}
    stats = Stats()
    rows = pq.read_table(unit_path(work, i, "samples.parquet")).to_pylist()
    keep = [row for j, row in enumerate(rows) if first + j not in gone]
    if keep:
        corpus.write_table(keep, corpus.SAMPLES, out / "data" / f"part-{i:05d}.parquet")
    stats.counts["samples_kept"] += len(keep)
    rejects = pq.read_table(unit_path(work, i, "rejects.parquet")).to_pylist()
    for j, row in enumerate(rows):
        if first + j not in gone:
            continue
        root, sim = gone[first + j]
        reason = "exact_duplicate" if sim >= 1.0 else "near_duplicate"
        for language in row["languages"]:
            stats.drop("dedup", reason, language, row["n_chars"] // len(row["languages"]), files=row["n_files"])
        rejects.append(
            {
                "repo": row["repo"],
                "path": ",".join(row["paths"]),
                "language": ",".join(row["languages"]),
                "step": "dedup",
                "reason": reason,
                "detail": f"duplicate of {sample_id(root)}",
                "text": row["text"],
                "n_chars": row["n_chars"],
                "source": row["source"],
            }
        )
    if rejects:
        corpus.write_table(rejects, corpus.REJECTS, out / "rejects" / f"part-{i:05d}.parquet")
    grouped = np.load(work / "dedup" / "clusters.npy", mmap_mode="r")
    rooted = grouped[np.searchsorted(grouped["root"], first) : np.searchsorted(grouped["root"], last)]
    lines = []
    for root in np.unique(rooted["root"]).tolist():
        members = rooted[rooted["root"] == root]
        listed = [
            {"id": sample_id(int(m)), "similarity": round(float(s), 4)}
            for m, s in zip(members["member"], members["sim"])
        ]
        lines.append(json.dumps({"survivor": sample_id(root), "duplicates": listed}) + "\n")
    stats.counts["duplicate_clusters"] += len(lines)
    artifacts.write_text(unit_path(work, i, "clusters.jsonl"), "".join(lines))
    artifacts.write_json(marker, stats.to_json())
    return peak_memory_mb()


def finalize(out: Path, work: Path, units: list[dict], skips: Counter, execute, offsets: list[int]) -> Stats:
    """Write the final shards, rejects, clusters and stats: one task per unit, then the driver
    adds up the stats and joins the units' cluster lines."""
    for folder in ("data", "rejects", "dedup"):
        artifacts.make_folder(out / folder)
        artifacts.remove_partials(out / folder)  # what a killed finish left half-written
    indices = [u["index"] for u in units]
    execute(
        "writing shards",
        finish_unit,
        [dict(u, number=k) for k, u in enumerate(units)],
        (str(work), str(out), indices, offsets),
    )
    total = Stats()
    total.skipped.update(skips)
    for u in units:
        total.add(Stats.from_json(json.loads(unit_path(work, u["index"], "stats.json").read_text())))
    for u in units:
        total.add(Stats.from_json(json.loads(unit_path(work, u["index"], "finished.json").read_text())))
    with artifacts.output_file(out / "dedup" / "clusters.jsonl", force=True) as f:
        for u in units:
            with open(unit_path(work, u["index"], "clusters.jsonl"), encoding="utf-8") as part:
                shutil.copyfileobj(part, f)
    total.counts["duplicate_clusters"] += 0  # present even when there is none
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


def build(
    out: Path,
    sources: list[Path],
    repos_in: list[Path],
    decontaminate: list[Path],
    cfg: BuildConfig,
    engine: str = "local",
    ray_address: str | None = None,
    force: bool = False,
    report: list | None = None,
) -> Stats:
    """Build (or resume building) the corpus `out` from the sources. `report`, when given,
    receives one dict per stage: its wall time and the peak memory of the driver and of the
    largest task."""
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
    manifest = {
        "kind": "corpus",
        "dscoder_version": __version__,
        "complete": False,
        **identity,
        "engine": engine,
        "workers": cfg.run.workers or default_workers(),
    }
    artifacts.write_json(out / corpus.MANIFEST, manifest)

    bench_path = None
    if benchmarks:
        bench_path = work / "decontam"
        if not bench_path.with_suffix(".json").is_file():
            save_index(build_index(strings, cfg.decontam), bench_path)
        bench_path = str(bench_path)

    execute = Executor(engine, cfg.run.workers or default_workers(), ray_address, report)
    plan = work / "plan.json"
    skips: Counter = Counter()
    if plan.is_file():
        units = json.loads(plan.read_text(encoding="utf-8"))["units"]
        skips.update(json.loads(plan.read_text(encoding="utf-8"))["skipped"])
    else:
        units = plan_units(work, cfg, repos, datasets, skips, execute)
        artifacts.write_json(plan, {"identity": identity, "units": units, "skipped": dict(skips)})
    pending = [u for u in units if not unit_path(work, u["index"], "stats.json").is_file()]
    log.info(
        "%s: %d repositories, %d dataset file(s), %d units (%d to do)",
        "resuming" if resuming else "building",
        len(repos),
        len(datasets),
        len(units),
        len(pending),
    )
    execute("units", run_unit, pending, (cfg, str(work), bench_path))

    offsets = unit_offsets(work, units)
    if deduplicate(work, units, cfg, execute, offsets) == 0:  # an empty corpus is an error, not a result
        total = Stats()
        total.skipped.update(skips)
        for u in units:
            total.add(Stats.from_json(json.loads(unit_path(work, u["index"], "stats.json").read_text())))
        shutil.rmtree(out)
        raise UserError(f"no sample was kept, so no corpus was written ({nothing_kept(total.to_json())})")
    stats = finalize(out, work, units, skips, execute, offsets.tolist())
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
    if not corpus.is_corpus(out):
        artifacts.check_replaceable(out)
    rebuild = out.parent / f".{out.name}.rebuild"
    try:
        prepare(rebuild, identity)
    except UserError:  # another rebuild's leftovers
        shutil.rmtree(rebuild)
    return rebuild
