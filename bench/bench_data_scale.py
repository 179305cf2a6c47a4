"""`dscoder data build` at crawl scale: a synthetic crawl of small repositories, built twice (the
whole crawl and a tenth of it), with the wall time and peak memory of every stage and the dedup
quality against the planted duplicates.

The crawl is made here, as The Stack ships code: parquet shards with repository, path and content
columns, a repository's files in one or more shards. Each repository is a small Python package
(2-5 modules importing one another, so one dependency-ordered sample each) written from a pool
of function templates with the repository's own identifiers. Planted among them:

- close forks (1-3% of lines changed) and exact copies of earlier repositories: duplicates, to be
  found (recall);
- distant forks (40-60% of lines changed) and repositories that vendor one module of another:
  not duplicates, to be kept (precision).

Printed per stage and scale: wall seconds, peak resident memory of the driver and of the largest
task; the number of files the spill stage wrote; then the driver's growth from a tenth of the
crawl to all of it (goal: under 2x for 10x the input), and pairwise precision/recall of the
duplicate clusters against the planted truth. With `--baseline REV`, the same crawl is also built
by a git worktree of REV, and the spill files and the peak memory of the largest tasks are
printed side by side.

    python bench/bench_data_scale.py [--repos 200000] [--workers 2] [--dir /tmp/dscoder-scale] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TEMPLATES = [
    '''def {P}_{a}({x}, {y}):
    """Return the {w} of {x} and {y}, {v} first."""
    {z} = {x} + {y} * {n}
    if {z} > {m}:
        return {z} - {x}
    return {z}
''',
    '''class {C}{a}:
    """A {w} that keeps {v} items."""

    def __init__(self, {x}):
        self.{x} = list({x})
        self.{y} = len(self.{x})

    def {P}_{b}(self, {z}):
        for item in self.{x}:
            if item == {z}:
                return True
        return False
''',
    '''def {P}_{a}({x}):
    """Count the {w} in {x} ({v})."""
    total = 0
    for {y} in {x}:
        if {y} % {n} == 0:
            total += {y}
        elif {y} > {m}:
            total -= 1
    return total
''',
    '''def {P}_{a}({x}, {y}={n}):
    """Split {x} into {w} of {y} ({v})."""
    {z} = []
    for start in range(0, len({x}), {y}):
        {z}.append({x}[start:start + {y}])
    return {z}
''',
    '''def {P}_{a}(path, {x}=None):
    """Read the {w} file at path, {v} lines only."""
    {y} = {{}}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if line.startswith("#"):
                continue
            {y}[number] = line.strip()
    return {y} if {x} is None else {y}.get({x})
''',
]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "be", "du", "fa", "go", "hu", "ji", "pe", "so", "wu", "xe"]


def word(rng: random.Random, parts: int = 3) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts))


def module(rng: random.Random, prefix: str, package: str, imports: list[str], blocks: int) -> str:
    """One module of a synthetic package: imports of its siblings, then `blocks` functions and
    classes named after the repository's own `prefix`."""
    lines = [f'"""The {word(rng)} {word(rng)} helpers of {package}."""\n']
    lines += [f"from {package} import {name}\n" for name in imports]
    lines.append("\n")
    for _ in range(blocks):
        template = rng.choice(TEMPLATES)
        lines.append(
            "\n"
            + template.format(
                P=prefix,
                C=prefix.capitalize(),
                a=word(rng, 2),
                b=word(rng, 2),
                x=word(rng, 2),
                y=word(rng, 2),
                z=word(rng, 2),
                w=word(rng),
                v=word(rng),
                n=rng.randint(2, 9),
                m=rng.randint(10, 999),
            )
            + "\n"
        )
    return "".join(lines)


def repository(rng: random.Random) -> dict[str, str]:
    prefix, package = word(rng), word(rng)
    names = [word(rng, 2) for _ in range(rng.randint(2, 5))]
    files = {}
    for i, name in enumerate(names):
        files[f"{package}/{name}.py"] = module(rng, prefix, package, names[:i][-2:], rng.randint(6, 14))
    return files


def edit(files: dict[str, str], fraction: float, rng: random.Random) -> dict[str, str]:
    """The same files with `fraction` of their lines changed (a comment added)."""
    edited = {}
    for path, text in files.items():
        lines = text.split("\n")
        for j in rng.sample(range(len(lines)), int(len(lines) * fraction)):
            lines[j] += f"  # {word(rng)} {word(rng)}"  # still valid Python, other words
        edited[path] = "\n".join(lines)
    return edited


def make_crawl(folder: Path, repos: int, shard_repos: int, seed: int) -> dict:
    """Write the crawl's parquet shards; returns the planted truth."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, dict[str, str]]] = []  # repositories that are not duplicates, to copy from
    clusters: dict[str, list[str]] = {}  # original -> its planted duplicates
    rows, shard, size = [], 0, 0
    for number in range(repos):
        name = f"org{number % 997}/repo{number:07d}"
        kind = rng.random() if made else 1.0
        if kind < 0.11:  # a close fork (1-3% of lines edited) or an exact copy
            origin, files = made[rng.randrange(len(made))]
            files = edit(files, rng.uniform(0.01, 0.03), rng) if kind < 0.08 else dict(files)
            clusters.setdefault(origin, []).append(name)
        elif kind < 0.15:  # distant fork: not a duplicate
            files = edit(made[rng.randrange(len(made))][1], rng.uniform(0.4, 0.6), rng)
        elif kind < 0.19:  # vendors one module of another repository: not a duplicate
            files = repository(rng)
            vendored = made[rng.randrange(len(made))][1]
            path = max((p for p in vendored if not p.startswith("vendored/")), key=lambda p: len(vendored[p]))
            files["vendored/" + path] = vendored[path]
            first = min(p for p in files if not p.startswith("vendored/"))
            package, module_name = path[:-3].split("/")
            files[first] = f"from vendored.{package} import {module_name}\n" + files[first]
        else:
            files = repository(rng)
        if kind >= 0.11:
            made.append((name, files))
        for path, text in files.items():
            rows.append({"repository": name, "path": path, "content": text})
            size += len(text)
        if (number + 1) % shard_repos == 0 or number == repos - 1:
            pq.write_table(pa.Table.from_pylist(rows), folder / f"shard-{shard:04d}.parquet")
            rows, shard = [], shard + 1
    truth = {"clusters": [[origin, *dups] for origin, dups in clusters.items()], "bytes": size, "repos": repos}
    (folder / "truth.json").write_text(json.dumps(truth))
    return truth


def pairwise(clusters: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(pair)) for members in clusters for pair in combinations(sorted(set(members)), 2)}


def found_clusters(corpus: Path) -> list[list[str]]:
    """The duplicate clusters of a built corpus, as repository names."""
    repo = lambda sample_id: sample_id.rsplit("/", 1)[0]  # noqa: E731
    found = []
    with open(corpus / "dedup" / "clusters.jsonl", encoding="utf-8") as f:
        for line in f:
            cluster = json.loads(line)
            found.append([repo(cluster["survivor"])] + [repo(d["id"]) for d in cluster["duplicates"]])
    return found


# Builds in a child process (so the driver's memory is the build's alone) with the code of the
# current folder; counts the files of the work folder once the spill stage is done and the bytes
# of dedup keys once the duplicates are found (the build removes its work folder at the end);
# prints its stage report.
BUILD = """
import json, sys
from pathlib import Path
from dscoder.config import apply_overrides
from dscoder.data import build as build_module
from dscoder.data.steps import BuildConfig
plan_units = build_module.plan_units

def counted(work, *args):
    units = plan_units(work, *args)
    print("SPILL " + str(sum(1 for p in work.rglob("*") if p.is_file())), flush=True)
    return units

deduplicate = build_module.deduplicate

def measured(work, *args):
    n = deduplicate(work, *args)
    print("KEYS " + str(sum(p.stat().st_size for p in (work / "units").glob("*.keys.npy"))), flush=True)
    return n

build_module.plan_units, build_module.deduplicate = counted, measured
shards, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
report = []
cfg = apply_overrides(BuildConfig(), {"run.workers": workers})
build_module.build(out, sorted(shards.glob("*.parquet")), [], [], cfg, report=report)
print("REPORT " + json.dumps(report))
"""


def run_build(shards: Path, out: Path, workers: int, tree: Path) -> tuple[list[dict], int, int]:
    """Build with the code in `tree`: its stage report, the files the spill stage wrote and the
    bytes of dedup keys."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(shards), str(out), str(workers)],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    if done.returncode:
        sys.exit(f"build with {tree} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    report = json.loads(next(line for line in lines if line.startswith("REPORT "))[7:])
    report.append(
        {
            "stage": "whole build",
            "seconds": round(time.perf_counter() - start, 1),
            "driver_peak_mb": max(s["driver_peak_mb"] for s in report),
            "task_peak_mb": max(s["task_peak_mb"] for s in report),
            "tasks": sum(s["tasks"] for s in report),
        }
    )
    found = {line.split()[0]: int(line.split()[1]) for line in lines if line.startswith(("SPILL ", "KEYS "))}
    return report, found["SPILL"], found["KEYS"]


def stage_peak(report: list[dict], stage: str) -> float:
    return next((s["task_peak_mb"] for s in report if s["stage"] == stage), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=200_000, help="repositories in the whole crawl")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the build")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dscoder-scale"), help="where the crawl and corpora go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", metavar="REV", help="also build with this git revision (a worktree of it)")
    parser.add_argument("--keep", action="store_true", help="keep the crawl and corpora afterwards")
    args = parser.parse_args()
    if args.repos < 100:
        sys.exit("--repos: at least 100")

    trees = {"current": REPO}
    if args.baseline:
        trees[args.baseline] = args.dir / "baseline"
        shutil.rmtree(trees[args.baseline], ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[args.baseline]), args.baseline],
            check=True,
            capture_output=True,
        )
    results = {}
    try:
        for label, repos in (("1/10", args.repos // 10), ("all", args.repos)):
            shards = args.dir / f"crawl-{repos}-seed{args.seed}"
            if not (shards / "truth.json").is_file():
                start = time.perf_counter()
                shutil.rmtree(shards, ignore_errors=True)
                make_crawl(shards, repos, shard_repos=max(1, repos // 10), seed=args.seed)
                print(f"made {repos:,} repositories in {time.perf_counter() - start:.0f} s", flush=True)
            truth = json.loads((shards / "truth.json").read_text())
            for name, tree in trees.items():
                out = args.dir / f"corpus-{repos}-{name}"
                shutil.rmtree(out, ignore_errors=True)
                report, spill_files, key_bytes = run_build(shards, out, args.workers, tree)
                expected, found = pairwise(truth["clusters"]), pairwise(found_clusters(out))
                hits = len(expected & found)
                pair_tasks = next(s["tasks"] for s in report if s["stage"] == "dedup pairs")
                results[label, name] = {
                    "mb": truth["bytes"] / 1e6,
                    "report": report,
                    "spill_files": spill_files,
                    "keys_mb": key_bytes / 1e6 / pair_tasks,
                }
                print(
                    f"\n{label} of the crawl: {repos:,} repositories in {len(list(shards.glob('*.parquet')))} shards, "
                    f"{truth['bytes'] / 1e6:,.0f} MB of code, {args.workers} workers, code: {name}"
                )
                print(f"  {'stage':20s} {'tasks':>7s} {'seconds':>9s} {'driver MB':>10s} {'largest task MB':>16s}")
                for s in report:
                    print(
                        f"  {s['stage']:20s} {s['tasks']:7d} {s['seconds']:9.1f} {s['driver_peak_mb']:10.0f} "
                        f"{s['task_peak_mb']:16.0f}"
                    )
                whole = report[-1]["seconds"]
                print(
                    f"  spill files: {spill_files:,}; dedup keys: {key_bytes / 1e6:,.0f} MB in {pair_tasks} key range(s)"
                )
                print(
                    f"  throughput: {truth['bytes'] / 1e6 / whole:.1f} MB/s "
                    f"({truth['bytes'] / 1e6 / whole / args.workers:.1f} MB/s per worker)"
                )
                print(
                    f"  dedup against the planted duplicates: precision {hits / len(found) if found else 1.0:.4f}, "
                    f"recall {hits / len(expected) if expected else 1.0:.4f} ({len(expected):,} planted pairs, "
                    f"{len(found):,} found)",
                    flush=True,
                )
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.baseline:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees[args.baseline])],
                capture_output=True,
            )
    for name in trees:
        small, large = (
            results["1/10", name]["report"][-1]["driver_peak_mb"],
            results["all", name]["report"][-1]["driver_peak_mb"],
        )
        print(
            f"\n{name}: driver peak memory: {small:.0f} MB for a tenth, {large:.0f} MB for all: {large / small:.2f}x for "
            f"{results['all', name]['mb'] / results['1/10', name]['mb']:.1f}x the input (goal: under 2x)"
        )
    if args.baseline:
        print(f"\nbefore ({args.baseline}) and now, all of the crawl:")
        before, now = results["all", args.baseline], results["all", "current"]
        rows = [
            ("spill files", before["spill_files"], now["spill_files"]),
            ("dedup keys of a pair task, MB", before["keys_mb"], now["keys_mb"]),
        ]
        rows += [
            (f"largest {stage} task, MB", stage_peak(before["report"], stage), stage_peak(now["report"], stage))
            for stage in ("spilling datasets", "dedup keys", "dedup pairs")
        ]
        rows.append(
            ("largest task of the build, MB", before["report"][-1]["task_peak_mb"], now["report"][-1]["task_peak_mb"])
        )
        for what, old, new in rows:
            print(f"  {what:34s} {old:10,.0f} {new:10,.0f}  ({new / old if old else float('nan'):.2f}x)")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
