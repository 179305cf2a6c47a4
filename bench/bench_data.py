"""Data pipeline throughput and dedup quality, against datasketch (and rensa when installed).

On the Python code installed on this machine (standard library, then site-packages):
1. MB/s of each step on one core, and of a whole `dscoder data build --workers 1` against the
   goal (10 MB/s per core); with `--baseline REV`, the same build by a git worktree of REV, run in
   alternation with the current code, and the speed-up over it (goal 3x over the code before the
   speed work, 6d7e02b);
2. our MinHash signatures against datasketch's on the same samples (BigCode-style word 5-gram
   shingles, 256 permutations), ratio printed;
3. dedup precision/recall/F1 on constructed sets of forks (copies with a few lines edited) and
   distinct files, for ours and datasketch's MinHashLSH at the same threshold (with the bands
   datasketch chooses for it: 25 x 10 for 0.7, BigCode's), pooled over `--sets` sets drawn with
   seeds 0, 1, ...; `--quality-only` runs this part alone.

    python bench/bench_data.py [--mb 37] [--pairs 200] [--sets 5] [--quality-only] [--baseline 6d7e02b --repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from dscoder.data import dedup, filters, pii, quality
from dscoder.data.decontam import DecontamConfig, build_index, match
from dscoder.data.installed import installed_python_roots
from dscoder.repo.collect import SKIPPED_DIRS, CollectConfig, read_folder
from dscoder.repo.dependencies import analyze
from dscoder.repo.imports import CodeFile
from dscoder.repo.parsing import parse

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"
GOAL_MB_S = 10.0  # whole build, per core
GOAL_SPEEDUP = 3.0  # over the build before the speed work
BEFORE_SPEED_WORK = "6d7e02b"
NON_ALPHA = re.compile(r"[^A-Za-z_0-9]")  # BigCode's tokenisation for MinHash


def load_corpus(megabytes: float):
    """(root, files) with up to `megabytes` of Python code, package by package."""
    files, total = [], 0
    for root in installed_python_roots():
        for folder in sorted(
            p
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith((".", "__")) and p.name not in SKIPPED_DIRS
        ):
            for f in read_folder(folder, CollectConfig(), Counter()):
                if f.language == "python":
                    files.append((folder, f))
                    total += len(f.text)
            if total >= megabytes * 1e6:
                return files, total
    return files, total


def timed(label, texts_mb, fn):
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"  {label:34s} {texts_mb / seconds:8.1f} MB/s")
    return seconds


def datasketch_signature(text, num_perm=256, ngram=5):
    from datasketch import MinHash

    tokens = [t for t in NON_ALPHA.split(text) if t]
    grams = {" ".join(tokens[i : i + ngram]) for i in range(max(len(tokens) - ngram + 1, 1))}
    m = MinHash(num_perm=num_perm)
    m.update_batch([g.encode("utf-8") for g in grams])
    return m


def rensa_signature(text, num_perm=256, ngram=5):
    from rensa import RMinHash

    tokens = [t for t in NON_ALPHA.split(text) if t]
    grams = [" ".join(tokens[i : i + ngram]) for i in range(max(len(tokens) - ngram + 1, 1))]
    m = RMinHash(num_perm=num_perm, seed=42)
    m.update(grams)
    return m


def fork_set(texts, pairs, rng):
    """Repository-like samples (3-6 real files each) and their forks.

    Every other original is followed by a fork with 1-5% of its lines edited (must be found);
    the others are followed by an unrelated repository that shares one of its files, as a
    vendored copy (must be kept)."""
    pool = [t for t in texts if t.count("\n") >= 20]
    rng.shuffle(pool)
    repos = []
    while len(repos) < 2 * pairs and pool:
        size = rng.randint(3, 6)
        repos.append(pool[:size])
        pool = pool[size:]
    items, truth = [], set()
    for i in range(0, len(repos) - 1, 2):
        original, other = repos[i], repos[i + 1]
        items.append("\n".join(original))
        if (i // 2) % 2 == 0:
            lines = items[-1].splitlines()
            for j in rng.sample(range(len(lines)), max(1, int(len(lines) * rng.uniform(0.01, 0.05)))):
                lines[j] = f"edited_{j} = {rng.randint(0, 10**6)}"
            truth.add((len(items) - 1, len(items)))
            items.append("\n".join(lines))
        else:
            shared = min(original, key=len)
            items.append("\n".join(other + [shared]))
    return items, truth


def file_fork_set(texts, pairs, rng):
    """A harder set: single files of 40+ lines, every other one forked with 2-10% of its lines
    edited (small files with many edits fall below the 0.7 Jaccard threshold)."""
    chosen = rng.sample([t for t in texts if t.count("\n") >= 40], pairs)
    items, truth = [], set()
    for i, text in enumerate(chosen):
        items.append(text)
        if i % 2 == 0:
            lines = text.splitlines()
            for j in rng.sample(range(len(lines)), max(1, int(len(lines) * rng.uniform(0.02, 0.10)))):
                lines[j] = f"edited_{j} = {rng.randint(0, 10**6)}"
            truth.add((len(items) - 1, len(items)))
            items.append("\n".join(lines))
    return items, truth


def our_pairs(items, cfg):
    sigs = np.stack([dedup.signature(t, cfg) for t in items])
    digests = np.frombuffer(b"".join(dedup.text_digest(t) for t in items), dtype=np.uint8).reshape(-1, 16)
    roots, _ = dedup.cluster(sigs, digests, cfg)
    return {(int(r), i) for i, r in enumerate(roots) if r != i}


def datasketch_lsh(cfg):
    """datasketch's MinHashLSH for our threshold, with the bands and rows it chooses for it."""
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)


def datasketch_pairs(items, cfg):
    lsh = datasketch_lsh(cfg)
    found = set()
    for i, text in enumerate(items):
        m = datasketch_signature(text, cfg.num_perm, cfg.ngram)
        for j in lsh.query(m):
            found.add((min(i, j), max(i, j)))
        lsh.insert(i, m)
    return found


# Runs `dscoder data build` with the code of the current folder and prints its own wall time.
BUILD_TIMER = """
import json, sys, time
from dscoder.cli import main
start = time.perf_counter()
main(sys.argv[1:])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def build_seconds(tree: Path, roots: list[Path], out: Path) -> tuple[float, float]:
    """(seconds, MB read) of `dscoder data build --workers 1` over `roots` with the code in `tree`."""
    command = [
        sys.executable,
        "-c",
        BUILD_TIMER,
        "data",
        "build",
        *map(str, roots),
        "--out",
        str(out),
        "--workers",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"the build with {tree} failed:\n{result.stderr[-3000:]}")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    shutil.rmtree(out)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"], sum(stats["chars_in"].values()) / 1e6


def whole_build(roots: list[Path], baseline: str | None, repeat: int) -> None:
    """The whole build on one core, against the goals; with `baseline`, also built by a worktree of
    that revision, the two in alternation (the machine's load changes in between)."""
    print("\nwhole build, one worker (dscoder data build --workers 1)")
    scratch = Path(tempfile.mkdtemp())
    trees = {"current": REPO}
    try:
        if baseline:
            trees[baseline] = scratch / "baseline"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[baseline]), baseline],
                check=True,
                capture_output=True,
            )
        best: dict[str, float] = {}
        for _ in range(repeat):
            for name, tree in trees.items():
                seconds, read_mb = build_seconds(tree, roots, scratch / "corpus")
                best[name] = min(best.get(name, seconds), seconds)
                print(
                    f"  {name:10s} {read_mb:.1f} MB of {len(roots)} repositories (all languages) in {seconds:.1f}s: "
                    f"{read_mb / seconds:.1f} MB/s per core",
                    flush=True,
                )
        rate = read_mb / best["current"]
        print(f"  current code: {rate:.1f} MB/s per core (goal {GOAL_MB_S:.0f}: {rate / GOAL_MB_S:.0%} of it)")
        if baseline:
            speedup = best[baseline] / best["current"]
            print(
                f"  {baseline}: {read_mb / best[baseline]:.1f} MB/s per core; speed-up {speedup:.2f}x "
                f"(goal {GOAL_SPEEDUP:.0f}x over {BEFORE_SPEED_WORK}, the code before the speed work)"
            )
        else:
            print(f"  (--baseline REV builds the same input with another revision for the {GOAL_SPEEDUP:.0f}x goal)")
    finally:
        if baseline:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees[baseline])], capture_output=True
            )
        shutil.rmtree(scratch, ignore_errors=True)


def dedup_quality(texts, pairs: int, sets: int) -> None:
    """Dedup precision, recall and F1 of ours and datasketch's, pooled over `sets` sets."""
    cfg = dedup.DedupConfig()
    lsh = datasketch_lsh(cfg)
    print(
        f"\ndedup quality at threshold {cfg.threshold}, {cfg.num_perm} permutations, pooled over {sets} set(s): "
        "dscoder {0} x {1} bands (candidates checked), datasketch {2} x {3} (candidates kept)".format(
            *dedup.banding(cfg), lsh.b, lsh.r
        )
    )
    kinds = [
        (
            f"{pairs} repository-like samples (3-6 files): half forked with 1-5% of lines edited, "
            "half paired with an unrelated repository vendoring one of their files",
            fork_set,
        ),
        (f"{pairs} single files of 40+ lines, half forked with 2-10% of lines edited", file_fork_set),
    ]
    for title, make in kinds:
        print(f"  {title}")
        made = [make(texts, pairs, random.Random(seed)) for seed in range(sets)]
        for name, fn in (("dscoder", our_pairs), ("datasketch", datasketch_pairs)):
            start = time.perf_counter()
            hits = found = planted = 0
            for items, truth in made:
                predicted = fn(items, cfg)
                hits, found, planted = hits + len(predicted & truth), found + len(predicted), planted + len(truth)
            p, r = hits / found if found else 1.0, hits / planted if planted else 1.0
            print(
                f"    {name:10s} precision {p:.3f} recall {r:.3f} F1 {2 * p * r / max(p + r, 1e-9):.3f}  "
                f"({time.perf_counter() - start:.1f}s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=37.0, help="megabytes of installed Python code")
    parser.add_argument("--pairs", type=int, default=200, help="originals in each fork set")
    parser.add_argument("--sets", type=int, default=5, help="fork sets of each kind, pooled (seeds 0, 1, ...)")
    parser.add_argument("--quality-only", action="store_true", help="only the dedup quality")
    parser.add_argument("--baseline", metavar="REV", help="also build with this git revision, in alternation")
    parser.add_argument("--repeat", type=int, default=1, help="whole builds per tree (the fastest counts)")
    args = parser.parse_args()

    files, total = load_corpus(args.mb)
    texts = [f.text for _, f in files]
    mb = total / 1e6
    print(f"corpus: {len(texts):,} Python files, {mb:.1f} MB from {len({str(r) for r, _ in files})} packages")
    if args.quality_only:
        return dedup_quality(texts, args.pairs, args.sets)

    print("\nper step, one core")
    cfg_filter, cfg_quality, cfg_pii, cfg_dedup = (
        filters.FilterConfig(),
        quality.QualityConfig(),
        pii.PIIConfig(),
        dedup.DedupConfig(),
    )
    timed("rule filters", mb, lambda: [filters.rule_reason(t, "python", cfg_filter) for t in texts])
    parsed = {}
    timed(
        "parse + readability",
        mb,
        lambda: [
            parsed.__setitem__(i, parse(t, "python")) or quality.quality_reason(t, parsed[i], cfg_quality)
            for i, t in enumerate(texts)
        ],
    )
    if (SHARED / "HumanEval.jsonl.gz").is_file():
        from dscoder.benchmark_files import contaminating_strings

        strings = [s for name in ("HumanEval.jsonl.gz", "mbpp.jsonl") for s in contaminating_strings(SHARED / name)[1]]
        index = build_index(strings, DecontamConfig())
        timed("decontamination (HumanEval+MBPP)", mb, lambda: [match(t, index) for t in texts])
    timed("PII redaction", mb, lambda: [pii.redact(t, cfg_pii, Counter()) for t in texts])

    def order_all():
        by_root = {}
        for i, (root, f) in enumerate(files):
            by_root.setdefault(root, []).append(CodeFile(f.path, f.text, "python", parsed[i]))
        for root, code in by_root.items():
            analyze(code, root.name, 0)

    timed("dependency extraction + Algorithm 1", mb, order_all)
    ours = timed("MinHash signatures (dscoder)", mb, lambda: [dedup.signature(t, cfg_dedup) for t in texts])
    theirs = timed("MinHash signatures (datasketch)", mb, lambda: [datasketch_signature(t) for t in texts])
    print(f"  -> dscoder / datasketch speed: {theirs / ours:.1f}x")
    try:
        import rensa  # noqa: F401

        rensa_s = timed("MinHash signatures (rensa)", mb, lambda: [rensa_signature(t) for t in texts])
        print(f"  -> dscoder / rensa speed: {rensa_s / ours:.1f}x")
    except ImportError:
        print("  (rensa not installed: pip install rensa to compare)")

    whole_build(sorted({r for r, _ in files}), args.baseline, args.repeat)
    dedup_quality(texts, args.pairs, args.sets)


if __name__ == "__main__":
    sys.exit(main())
