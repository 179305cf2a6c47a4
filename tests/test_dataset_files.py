"""Dataset files as repositories: spilling rows by repository into one indexed file per dataset
file, and reading a bucket back from every spill."""

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscoder.data.dataset_files import bucket_of, read_bucket, spill, spill_skips
from dscoder.errors import UserError
from dscoder.repo.collect import CollectConfig

ROWS = [
    {"repository": f"org/r{i % 37}", "path": f"pkg/m{i}.py", "content": f"def f{i}(x):\n    return x * {i}  # é\n"}
    for i in range(600)
]
BUCKETS = 16


@pytest.fixture
def spills(tmp_path):
    """Two parquet shards with rows of the same repositories, each spilled in small flushes (so a
    bucket is several gzip members)."""
    paths = []
    for k in range(2):
        shard = tmp_path / f"shard-{k}.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS[k::2]), shard)
        paths.append(tmp_path / "spill" / f"file-{k:05d}.spill")
        spill(shard, k, paths[-1], BUCKETS, flush_bytes=2000)
    return paths


def test_one_file_per_dataset_file_and_every_row_comes_back_in_its_repositorys_bucket(spills, tmp_path):
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == ["file-00000.spill", "file-00001.spill"]
    seen = {}
    for bucket in range(BUCKETS):
        for repo in read_bucket(spills, bucket, CollectConfig(), Counter()):
            assert bucket_of(repo.name, BUCKETS) == bucket
            assert [f.path for f in repo.files] == sorted(f.path for f in repo.files)
            seen.update({(repo.name, f.path): f.text for f in repo.files})
    assert seen == {(r["repository"], r["path"]): r["content"] for r in ROWS}


def test_skipped_rows_are_counted_in_the_spill_file(tmp_path):
    shard = tmp_path / "rows.jsonl"
    odd = [
        {"repository": "org/x", "path": None, "content": "x"},
        {"repository": "org/x", "path": "a.py", "content": "s = '\ud800'\n"},  # a lone surrogate: not text
        {"repository": "org/\udfff", "path": "b.py", "content": "x = 1\n"},
    ]
    shard.write_text("".join(json.dumps(r) + "\n" for r in [*ROWS[:5], *odd]))
    target = tmp_path / "file-00000.spill"
    spill(shard, 0, target, 4)
    assert spill_skips(target) == {"dataset_row_missing_field": 1, "dataset_row_not_unicode": 2}
    assert sum(len(repo.files) for b in range(4) for repo in read_bucket([target], b, CollectConfig(), Counter())) == 5


def test_a_spill_file_cut_short_is_detected(spills):
    whole = spills[0].read_bytes()
    assert spill_skips(spills[0]) == {}
    for length in (0, 10, len(whole) // 2, len(whole) - 1):
        spills[0].write_bytes(whole[:length])
        assert spill_skips(spills[0]) is None  # the build spills it again
        with pytest.raises(UserError, match="file-00000.spill: spill file cut short"):
            read_bucket(spills, 0, CollectConfig(), Counter())
    spills[0].unlink()
    assert spill_skips(spills[0]) is None
    with pytest.raises(UserError, match="file-00000.spill: spill file missing"):
        read_bucket(spills, 0, CollectConfig(), Counter())


def test_a_failed_spill_leaves_no_file(tmp_path):
    """A spill stopped part-way (here by a dataset file cut mid-stream, after several flushes)
    publishes nothing: the target is missing, so the build spills it again."""
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode())
    shard = tmp_path / "rows.jsonl.gz"
    shard.write_bytes(data[: len(data) * 2 // 3])
    target = tmp_path / "spill" / "file-00000.spill"
    with pytest.raises(UserError, match="rows.jsonl.gz: unreadable dataset file"):
        spill(shard, 0, target, 4, flush_bytes=2000)
    assert list((tmp_path / "spill").iterdir()) == []
