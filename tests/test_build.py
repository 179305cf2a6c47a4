"""`dscoder data build` end to end: outputs, resume after a kill, engines, bad input."""

import json
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import C_REPO, JAVA_REPO, PYTHON_REPO, SHARED, STDLIB, need_shared, write_tree
from dscoder.cli import main
from dscoder.config import apply_overrides
from dscoder.data import build as build_module
from dscoder.data.build import build
from dscoder.data.steps import BuildConfig
from dscoder.errors import UserError

HUMANEVAL = SHARED / "benchmarks" / "HumanEval.jsonl.gz"


def read_rows(folder):
    files = sorted(folder.glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def corpus_content(out):
    """Everything a build wrote, in comparable form."""
    return {
        "data": sorted(read_rows(out / "data"), key=lambda r: r["id"]),
        "rejects": sorted(read_rows(out / "rejects"), key=lambda r: (r["repo"], r["path"], r["step"])),
        "stats": json.loads((out / "stats.json").read_text()),
        "clusters": (out / "dedup" / "clusters.jsonl").read_text(),
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    demo = dict(PYTHON_REPO)
    demo["pkg/broken.py"] = "def broken(:\n    pass\n"
    demo["pkg/settings.py"] = "API_KEY = 'AKIAIOSFODNN7EXAMPLE'\nADMIN = 'ops@acme-corp.com'\n"
    write_tree(root / "demo", demo)
    fork = {k: v.replace("hello from the helpers module", "hello from my fork") for k, v in demo.items()}
    write_tree(root / "demo-fork", fork)
    java = write_tree(root / "java-src", JAVA_REPO)
    with tarfile.open(root / "shapes.tar.gz", "w:gz") as tar:
        tar.add(java, arcname="shapes")
    write_tree(root / "calc", C_REPO)
    subprocess.run(["git", "-C", str(root / "calc"), "init", "-q"], check=True)
    subprocess.run(
        ["git", "-C", str(root / "calc"), "-c", "user.email=t@e.org", "-c", "user.name=t", "add", "."], check=True
    )
    subprocess.run(
        ["git", "-C", str(root / "calc"), "-c", "user.email=t@e.org", "-c", "user.name=t", "commit", "-qm", "c"],
        check=True,
    )
    leak = (
        "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """ Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.\n    """\n    return False\n'
    )
    write_tree(root / "leaky", {"solutions.py": leak, "ok.py": "def fine(x):\n    return x * 2\n"})
    rows = [
        {
            "max_stars_repo_name": "org/tablelib",
            "max_stars_repo_path": "tablelib/__init__.py",
            "content": "from .table import Table\n",
        },
        {
            "max_stars_repo_name": "org/tablelib",
            "max_stars_repo_path": "tablelib/table.py",
            "content": "class Table:\n    def __init__(self, rows):\n        self.rows = list(rows)\n",
        },
        {
            "max_stars_repo_name": "org/other",
            "max_stars_repo_path": "main.py",
            "content": "print('another repository entirely')\n",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "stack-python-0.parquet")
    (root / "stack-python-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    return root


def source_args(root):
    return [
        root / "demo",
        root / "demo-fork",
        root / "shapes.tar.gz",
        root / "calc",
        root / "leaky",
        root / "stack-python-0.parquet",
        root / "stack-python-1.jsonl",
    ]


def test_build_outputs(sources, tmp_path, capsys, monkeypatch):
    need_shared(HUMANEVAL)
    out = tmp_path / "corpus"
    argv = ["data", "build", "--out", str(out), "--workers", "1", "--decontaminate", str(HUMANEVAL), "--"]
    assert main(argv + [str(p) for p in source_args(sources)]) == 0
    stdout = capsys.readouterr().out
    assert "dropped at dedup" in stdout and "corpus:" in stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "corpus" and manifest["complete"] and not (out / "work").exists()
    table = ds.dataset(out / "data", format="parquet").to_table()
    assert set(table.column_names) >= {"id", "repo", "paths", "languages", "text", "n_chars", "source"}
    samples = {r["id"]: r for r in table.to_pylist()}
    by_repo = {}
    for r in samples.values():
        by_repo.setdefault(r["repo"], []).append(r)

    # Python: one dependency-ordered sample with path headers; README is its own sample, headed too.
    demo = {tuple(r["paths"]): r for r in by_repo["demo"]}
    (main_sample,) = [r for r in demo.values() if "main.py" in r["paths"]]
    order = main_sample["paths"]
    assert (
        order.index("pkg/util.py")
        < order.index("pkg/core.py")
        < order.index("pkg/__init__.py")
        < order.index("main.py")
    )
    assert main_sample["text"].startswith(f"#{order[0]}\n")
    assert ("README.md",) in demo and demo[("README.md",)]["text"].startswith("#README.md\n# Demo")
    assert "<KEY>" in main_sample["text"] + "".join(r["text"] for r in demo.values())
    assert "AKIAIOSFODNN7EXAMPLE" not in "".join(r["text"] for r in samples.values())

    assert "demo-fork" not in by_repo  # a near-duplicate of demo
    assert {r["repo"] for r in samples.values()} >= {"demo", "shapes", "calc", "leaky", "org/tablelib", "org/other"}
    (tables,) = by_repo["org/tablelib"]
    assert tables["paths"] == ["tablelib/table.py", "tablelib/__init__.py"]
    (calc,) = [r for r in by_repo["calc"] if "src/main.c" in r["paths"]]
    assert calc["paths"].index("lib/inc/vec.h") < calc["paths"].index("src/ops.h") < calc["paths"].index("src/main.c")

    rejects = read_rows(out / "rejects")
    reasons = {(r["repo"], r["path"]): (r["step"], r["reason"]) for r in rejects}
    assert reasons[("demo", "pkg/broken.py")] == ("quality", "syntax_error")
    assert reasons[("leaky", "solutions.py")] == ("decontam", "HumanEval.jsonl.gz")
    assert any(r["step"] == "dedup" and r["repo"] == "demo-fork" for r in rejects)
    clusters = [json.loads(line_) for line_ in (out / "dedup" / "clusters.jsonl").read_text().splitlines()]
    assert any(
        c["survivor"].startswith("demo/") and any(d["id"].startswith("demo-fork/") for d in c["duplicates"])
        for c in clusters
    )

    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"]["quality/syntax_error/python"] == 2  # demo and its fork
    assert main(["data", "stats", str(out)]) == 0
    assert "dropped at quality" in capsys.readouterr().out

    # An existing, finished corpus is refused without --force; with it, rebuilt identically.
    before = corpus_content(out)
    assert main(argv + [str(p) for p in source_args(sources)]) == 2
    assert "already holds a finished corpus" in capsys.readouterr().err
    assert main(argv[:-1] + ["--force", "--"] + [str(p) for p in source_args(sources)]) == 0
    assert corpus_content(out) == before

    # The shards load with Hugging Face datasets too.
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = datasets.load_dataset(
        "parquet",
        data_files=sorted(map(str, (out / "data").glob("*.parquet"))),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert sorted(loaded["id"]) == sorted(samples)

    # The corpus is a tokenizer input.
    assert main(["tokenizer", "train", str(out), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 0


def stdlib_repos():
    return [
        STDLIB / name
        for name in (
            "json",
            "email",
            "logging",
            "asyncio",
            "concurrent",
            "importlib",
            "sqlite3",
            "urllib",
            "xml",
            "http",
            "unittest",
            "wsgiref",
        )
    ]


def uninterrupted(tmp_path, cfg):
    out = tmp_path / "reference"
    build(out, stdlib_repos(), [], [], cfg)
    return corpus_content(out)


CFG = apply_overrides(BuildConfig(), {"run.repos_per_unit": "1", "run.workers": "1"})


def test_kill_and_resume_gives_the_uninterrupted_output(tmp_path):
    reference = uninterrupted(tmp_path, CFG)
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "dscoder",
        "data",
        "build",
        "--out",
        str(out),
        "--workers",
        "1",
        "--run.repos_per_unit=1",
        *map(str, stdlib_repos()),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "work" / "units").glob("*.stats.json"))) < 3:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / "work" / "units").glob("*.stats.json")))
    assert 0 < done < len(stdlib_repos()), "the kill should land mid-build"
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert corpus_content(out) == reference


def test_crash_while_finishing_then_resume(tmp_path, monkeypatch):
    reference = uninterrupted(tmp_path, CFG)
    out = tmp_path / "crashed"
    real_write = build_module.corpus.write_table
    calls = {"n": 0}

    def failing_write(rows, schema, path):
        if "data" == path.parent.name:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError("disk full")
        return real_write(rows, schema, path)

    monkeypatch.setattr(build_module.corpus, "write_table", failing_write)
    with pytest.raises(OSError):
        build(out, stdlib_repos(), [], [], CFG)
    monkeypatch.setattr(build_module.corpus, "write_table", real_write)
    with pytest.raises(UserError, match="other inputs or settings"):
        build(out, stdlib_repos()[:3], [], [], CFG)
    build(out, stdlib_repos(), [], [], CFG)
    assert corpus_content(out) == reference


def test_worker_processes_give_the_same_output(tmp_path):
    reference = uninterrupted(tmp_path, CFG)
    out = tmp_path / "two-workers"
    build(out, stdlib_repos(), [], [], apply_overrides(CFG, {"run.workers": "2"}))
    assert corpus_content(out) == reference


def test_bad_sources(tmp_path, capsys):
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    code = main(["data", "build", "--out", str(tmp_path / "c1"), "--workers", "1", str(corrupt)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.parquet: unreadable parquet file" in err and "Traceback" not in err

    weird = tmp_path / "data.jsonl"
    weird.write_text('{"name": "x", "body": "y"}\n')
    assert main(["data", "build", "--out", str(tmp_path / "c2"), str(weird)]) == 2
    assert "no repository column" in capsys.readouterr().err

    assert main(["data", "build", "--out", str(tmp_path / "c3"), str(tmp_path / "missing")]) == 2
    assert "source not found" in capsys.readouterr().err

    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"q": 1}\n')
    repo = write_tree(tmp_path / "r", {"a.py": "x = 1\n"})
    assert main(["data", "build", "--out", str(tmp_path / "c4"), "--decontaminate", str(bench), "--", str(repo)]) == 2
    assert "unknown benchmark format" in capsys.readouterr().err

    (tmp_path / "r" / "dangling.py").symlink_to(tmp_path / "nowhere.py")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08 broken")
    assert main(["data", "build", "--out", str(tmp_path / "c5"), "--workers", "1", str(repo), str(broken)]) == 2
    err = capsys.readouterr().err  # nothing kept: an error with the counts, and no corpus
    assert "no sample was kept" in err and "broken_symlink 1" in err and "unreadable_repository 1" in err
    assert not (tmp_path / "c5").exists()
    write_tree(tmp_path / "r", {"clamp.py": PYTHON_REPO["pkg/util.py"]})
    assert main(["data", "build", "--out", str(tmp_path / "c5"), "--workers", "1", str(repo), str(broken)]) == 0
    stats = json.loads((tmp_path / "c5" / "stats.json").read_text())
    assert stats["skipped"]["broken_symlink"] == 1 and stats["skipped"]["unreadable_repository"] == 1


def test_truncated_dataset_shards_are_one_line_and_no_smaller_corpus(tmp_path, capsys):
    """A shard cut short (a copy that stopped mid-way) is never read as a smaller corpus: a parquet
    file without its footer is refused before anything is written; a JSON-lines.gz file cut
    mid-stream stops the build with one line naming it, and no corpus is marked complete."""
    rows = [
        {"repo": f"org/r{i}", "path": f"m{i}.py", "content": f"def f{i}(x):\n    return x + {i}\n" * 20}
        for i in range(300)
    ]
    whole = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pylist(rows), whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert main(["data", "build", "--out", str(tmp_path / "c1"), "--workers", "1", str(whole), str(cut)]) == 2
    err = capsys.readouterr().err
    assert "cut.parquet: unreadable parquet file" in err and "Traceback" not in err
    assert not (tmp_path / "c1").exists()

    import gzip

    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) * 2 // 3])
    assert main(["data", "build", "--out", str(tmp_path / "c2"), "--workers", "1", str(gz)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and "cut.jsonl.gz: unreadable dataset file" in lines[0], lines
    assert not json.loads((tmp_path / "c2" / "manifest.json").read_text())["complete"]
    gz.write_bytes(data)  # the file copied again in full: the same command finishes the build
    assert main(["data", "build", "--out", str(tmp_path / "c2"), "--workers", "1", str(gz)]) == 0
    assert len(read_rows(tmp_path / "c2" / "data")) == 300


def test_a_repository_that_vanishes_during_the_build_is_one_line_then_resumes(tmp_path, capsys, monkeypatch):
    repos = tmp_path / "repos"
    for name in ("a", "b", "c"):
        write_tree(repos / name, {"m.py": PYTHON_REPO["pkg/util.py"].replace("clamp", f"clamp_{name}")})
    real_plan = build_module.plan_units

    def plan_then_delete(*args, **kwargs):
        units = real_plan(*args, **kwargs)
        (repos / "b").rename(tmp_path / "b-moved")
        return units

    monkeypatch.setattr(build_module, "plan_units", plan_then_delete)
    out = tmp_path / "out"
    assert (
        main(["data", "build", "--out", str(out), "--workers", "1", "--run.repos_per_unit=1", "--repos-in", str(repos)])
        == 2
    )
    err = capsys.readouterr().err
    assert "the repository vanished during the build" in err and "/b:" in err and "Traceback" not in err
    monkeypatch.undo()
    (tmp_path / "b-moved").rename(repos / "b")
    assert (
        main(["data", "build", "--out", str(out), "--workers", "1", "--run.repos_per_unit=1", "--repos-in", str(repos)])
        == 0
    )
    assert sorted(r["repo"] for r in read_rows(out / "data")) == ["a", "b", "c"]


def test_files_that_vanish_while_a_repository_is_read_are_read_again(tmp_path, monkeypatch):
    """A file listed but gone when read (a checkout being updated): the repository is read again,
    and the sample is the repository as it now is, with nothing counted unreadable."""
    repo = write_tree(tmp_path / "r", {"keep.py": PYTHON_REPO["pkg/util.py"], "temp.py": "x = 1\n"})
    real_read = build_module.read_repository
    calls = []

    def read_while_a_file_goes(path, cfg, skips, name=None):
        calls.append(path)
        if len(calls) == 1:
            (repo / "temp.py").unlink()
            skips["unreadable"] += 1  # as the reader counts a listed file it could not open
            return real_read(path, cfg, Counter(), name)
        return real_read(path, cfg, skips, name)

    monkeypatch.setattr(build_module, "read_repository", read_while_a_file_goes)
    stats = build(tmp_path / "out", [repo], [], [], CFG)
    assert len(calls) == 2 and "unreadable" not in stats.skipped
    assert [r["paths"] for r in read_rows(tmp_path / "out" / "data")] == [["keep.py"]]


DATASET_ROWS = [
    {
        "repo": f"org/r{i % 40}",
        "path": f"pkg/m{i}.py",
        "content": f"import pkg.m{max(i - 40, 0)}\n\ndef f{i}(x):\n    return x * {i}\n",
    }
    for i in range(400)
]


def dataset_shards(folder):
    """The rows of 40 repositories spread over 4 parquet shards."""
    shards = []
    for k in range(4):
        shards.append(folder / f"shard-{k}.parquet")
        pq.write_table(pa.Table.from_pylist(DATASET_ROWS[k::4]), shards[-1])
    return shards


def test_dataset_files_spilled_in_parallel_give_the_same_corpus(tmp_path):
    """Rows of one repository spread over several shards (as The Stack splits by language) are
    spilled by one task per shard, then gathered per bucket: two workers and one give the same
    corpus, and each repository is one sample set."""
    rows, shards = DATASET_ROWS, dataset_shards(tmp_path)
    cfg = apply_overrides(CFG, {"run.bucket_bytes": "5000"})
    build(tmp_path / "one", shards, [], [], cfg)
    build(tmp_path / "two", shards, [], [], apply_overrides(cfg, {"run.workers": "2"}))
    assert corpus_bytes(tmp_path / "one").keys() - {"manifest.json"} == corpus_bytes(tmp_path / "two").keys() - {
        "manifest.json"
    }
    assert corpus_content(tmp_path / "one") == corpus_content(tmp_path / "two")
    samples = read_rows(tmp_path / "one" / "data")
    assert sorted({s["repo"] for s in samples}) == sorted({r["repo"] for r in rows})
    assert sum(s["n_files"] for s in samples) == 400


def test_a_spill_file_cut_short_by_a_crash_is_spilled_again_on_resume(tmp_path, monkeypatch):
    """Each dataset file is spilled into one file; a crash that leaves one cut short (a power cut
    after its rename) makes the resumed build spill that file again, and only that one."""
    shards = dataset_shards(tmp_path)
    cfg = apply_overrides(CFG, {"run.bucket_bytes": "5000"})
    build(tmp_path / "reference", shards, [], [], cfg)
    real_spill = build_module.spill

    def spill_then_crash(path, number, target, buckets):
        real_spill(path, number, target, buckets)
        if number == 2:
            target.write_bytes(target.read_bytes()[:-100])
            raise KeyboardInterrupt  # stands in for the kill: nothing after this line runs

    monkeypatch.setattr(build_module, "spill", spill_then_crash)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build(out, shards, [], [], cfg)
    assert sorted(p.name for p in (out / "work" / "spill").glob("*.spill")) == [f"file-{k:05d}.spill" for k in range(3)]
    spilled = []
    monkeypatch.setattr(
        build_module, "spill", lambda path, number, *args: spilled.append(number) or real_spill(path, number, *args)
    )
    build(out, shards, [], [], cfg)
    assert spilled == [2, 3]
    assert corpus_bytes(out) == corpus_bytes(tmp_path / "reference")


@pytest.mark.parametrize("kind", ["empty folder", "binaries", "one 5 MB line"])
def test_a_build_that_keeps_nothing_is_an_error_and_writes_nothing(kind, tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    if kind == "binaries":
        for i in range(3):
            (repo / f"blob{i}.bin").write_bytes(bytes(range(256)) * 40)
    elif kind == "one 5 MB line":
        (repo / "data.py").write_text("x = [" + "1, " * 1_700_000 + "]")
    code = main(["data", "build", "--out", str(tmp_path / "corpus"), "--workers", "1", str(repo)])
    err = capsys.readouterr().err
    assert code == 2 and "no sample was kept, so no corpus was written" in err and "Traceback" not in err
    assert "1 repositories" in err
    assert not (tmp_path / "corpus").exists()


def test_bad_decontamination_files_are_refused_before_anything_is_written(tmp_path, capsys):
    repo = write_tree(tmp_path / "r", {"clamp.py": PYTHON_REPO["pkg/util.py"]})
    for bad, needle in (
        (tmp_path / "missing.jsonl", "benchmark file not found"),
        (write_tree(tmp_path, {"bad.jsonl": "{not json\n"}) / "bad.jsonl", "bad.jsonl"),
    ):
        code = main(["data", "build", "--out", str(tmp_path / "c"), "--decontaminate", str(bad), "--", str(repo)])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err
        assert not (tmp_path / "c").exists()
    built = main(["data", "build", "--out", str(tmp_path / "c"), "--workers", "1", str(repo)])
    assert built == 0  # the corrected command
    capsys.readouterr()
    code = main(
        [
            "data",
            "build",
            "--out",
            str(tmp_path / "c"),
            "--force",
            "--decontaminate",
            str(tmp_path / "missing.jsonl"),
            "--",
            str(repo),
        ]
    )
    assert code == 2 and (tmp_path / "c" / "stats.json").is_file()  # --force does not drop the corpus first


def test_a_forced_rebuild_replaces_the_corpus_only_once_it_is_finished(tmp_path, capsys):
    repo = write_tree(tmp_path / "r", {"clamp.py": PYTHON_REPO["pkg/util.py"]})
    out = tmp_path / "corpus"
    assert main(["data", "build", "--out", str(out), "--workers", "1", str(repo)]) == 0
    before = (out / "stats.json").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "build", "--out", str(out), "--workers", "1", "--force", str(empty)]) == 2
    assert "no sample was kept" in capsys.readouterr().err
    assert (out / "stats.json").read_text() == before  # the old corpus is still there
    assert main(["data", "build", "--out", str(out), "--workers", "1", "--force", str(repo), str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def corpus_bytes(out):
    """Every file of a finished corpus, byte for byte."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_at_ten_points_then_resumed_gives_the_same_bytes(tmp_path):
    """SIGKILL at twelve points of one build, chosen from its progress (units done, dedup keys
    written, duplicates found, units finished), resuming after each: the corpus is byte-identical to an uninterrupted one."""
    out = tmp_path / "killed"
    reference = tmp_path / "reference"
    command = [
        sys.executable,
        "-m",
        "dscoder",
        "-q",
        "data",
        "build",
        "--workers",
        "1",
        "--run.repos_per_unit=1",
        *map(str, stdlib_repos()),
    ]
    assert subprocess.run([*command, "--out", str(reference)], capture_output=True).returncode == 0
    units = out / "work" / "units"

    def count(folder, pattern):
        try:
            return len(list(folder.glob(pattern)))
        except FileNotFoundError:  # not made yet, or being replaced
            return 0

    points = [lambda n=n: count(units, "*.stats.json") >= n for n in (1, 2, 4, 6, 8, 10)]
    points += [lambda n=n: count(units, "*.keys.npy") >= n for n in (2, 8)]
    points += [
        lambda: (out / "work" / "dedup" / "clusters.npy").is_file(),
        lambda: count(units, "*.finished.json") >= 3,
        lambda: count(units, "*.finished.json") >= 9,
        lambda: (out / "stats.json").is_file(),
    ]
    landed = 0
    for reached in points:
        process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while process.poll() is None and not reached() and time.time() < deadline:
            time.sleep(0.002)
        if process.poll() is not None:
            break  # it finished before this point: the later points cannot be reached either
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed += 1
    assert landed >= 10, f"only {landed} kills landed mid-build"
    finished = json.loads((out / "manifest.json").read_text()).get("complete")
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    if finished:  # the last kill came after the end
        assert resumed.returncode == 2 and "already holds a finished corpus" in resumed.stderr
    else:
        assert resumed.returncode == 0, resumed.stderr
    assert corpus_bytes(out) == corpus_bytes(reference)


def test_a_finish_killed_at_its_last_steps_resumes_to_a_clean_corpus(tmp_path, monkeypatch):
    """The moments a kill is least likely to hit, made certain: half-written files left in the
    corpus's folders, and a kill after the work folder was set aside but before the manifest
    said complete. The resumed corpus is the uninterrupted one, with nothing left over."""
    repos = stdlib_repos()[:3]
    reference = tmp_path / "reference"
    build(reference, repos, [], [], CFG)
    out = tmp_path / "out"
    real_write = build_module.artifacts.write_json

    def killed_when_complete(path, data, **kwargs):
        if isinstance(data, dict) and data.get("complete"):
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(build_module.artifacts, "write_json", killed_when_complete)
    with pytest.raises(KeyboardInterrupt):
        build(out, repos, [], [], CFG)
    monkeypatch.setattr(build_module.artifacts, "write_json", real_write)
    assert not (out / "work").exists() and (out / build_module.FINISHED).is_dir()
    build(out, repos, [], [], CFG)
    assert corpus_bytes(out) == corpus_bytes(reference)

    out = tmp_path / "litter"

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_complete", killed)
    with pytest.raises(KeyboardInterrupt):
        build(out, repos, [], [], CFG)
    monkeypatch.undo()
    for leftover in (
        out / "data" / ".part-00000.parquet.0123456789ab.partial",
        out / "rejects" / ".part-00007.parquet.0123456789ab.partial",
        out / ".stats.json.0123456789ab.partial",
    ):
        leftover.write_bytes(b"half a file")
    build(out, repos, [], [], CFG)
    assert corpus_bytes(out) == corpus_bytes(reference)


def test_a_full_disk_is_one_line_and_the_build_resumes(tmp_path):
    """A file-size limit stands in for a full disk: one clear line, then the same command with
    room finishes the build with the uninterrupted output."""
    import resource

    command = [
        sys.executable,
        "-m",
        "dscoder",
        "data",
        "build",
        "--workers",
        "1",
        "--run.repos_per_unit=1",
        *map(str, stdlib_repos()[:4]),
        "--out",
        str(tmp_path / "out"),
    ]
    full = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)),
    )
    lines = [line for line in full.stderr.splitlines() if line.startswith("dscoder: error:")]
    assert full.returncode == 2 and len(lines) == 1, full.stderr
    assert "cannot be written" in lines[0] and "File too large" in lines[0], lines
    assert "Traceback" not in full.stderr
    assert subprocess.run(command, capture_output=True).returncode == 0
    reference = tmp_path / "reference"
    build(reference, stdlib_repos()[:4], [], [], CFG)
    assert corpus_content(tmp_path / "out") == corpus_content(reference)
