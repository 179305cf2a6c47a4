"""The corpus format written by `dscoder data build` and read by every later stage.

```
DIR/manifest.json      kind "corpus", resolved config, inputs, versions, complete flag
DIR/stats.json         kept and dropped, per step, rule and language
DIR/data/part-NNNNN.parquet      samples, zstd: id, repo, paths, languages, text, n_chars, n_files, source
DIR/rejects/part-NNNNN.parquet   dropped files and samples with step, reason and detail
DIR/dedup/clusters.jsonl         near-duplicate clusters with their survivor
```
Shards are plain parquet: `pyarrow.dataset.dataset(DIR/data)` and
`datasets.load_dataset("parquet", data_files=...)` read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from dscoder import artifacts, formats
from dscoder.errors import UserError

SAMPLES = pa.schema(
    [
        ("id", pa.string()),
        ("repo", pa.string()),
        ("paths", pa.list_(pa.string())),
        ("languages", pa.list_(pa.string())),
        ("text", pa.string()),
        ("n_chars", pa.int64()),
        ("n_files", pa.int32()),
        ("source", pa.string()),
    ]
)
REJECTS = pa.schema(
    [
        ("repo", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("text", pa.string()),
        ("n_chars", pa.int64()),
        ("source", pa.string()),
    ]
)
MANIFEST = "manifest.json"
COMPRESSION = "zstd"


def write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    """Write rows as one zstd parquet file (whole or not at all)."""
    artifacts.write_table(path, pa.Table.from_pylist(rows, schema=schema), COMPRESSION)


def write_corpus(folder: Path, rows: list[dict], manifest: dict) -> None:
    """A finished corpus folder holding `rows` (samples) in one shard, replacing `folder`."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    artifacts.make_folder(folder / "data")
    write_table(rows, SAMPLES, folder / "data" / "part-00000.parquet")
    from dscoder.data.stats import Stats

    stats = Stats()
    stats.counts.update({"samples": len(rows), "samples_kept": len(rows)})
    artifacts.write_json(folder / "stats.json", stats.to_json())
    artifacts.write_json(folder / MANIFEST, {"kind": "corpus", "complete": True, **manifest})


def is_corpus(path: str | Path) -> bool:
    manifest = Path(path, MANIFEST)
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("kind") == "corpus"
    except (OSError, json.JSONDecodeError):
        return False


def shards(path: str | Path) -> list[Path]:
    """The sample shards of a finished corpus."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    if not manifest.get("complete"):
        raise UserError(f"{path}: the corpus build has not finished (run `dscoder data build` again to resume)")
    return sorted((path / "data").glob("part-*.parquet"))


def iter_rows(path: str | Path, columns: tuple[str, ...] = ("text",), batch_rows: int = 256) -> Iterator[dict]:
    """Samples of a corpus (the given columns), shard by shard, in order."""
    for shard in shards(path):
        try:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=list(columns)):
                yield from batch.to_pylist()
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"{shard}: unreadable corpus shard ({exc})") from None


def iter_texts(path: str | Path, batch_rows: int = 256) -> Iterator[str]:
    """Sample texts of a corpus, shard by shard, in order."""
    for row in iter_rows(path, ("text",), batch_rows):
        yield row["text"]


def files_of(rows: Iterable[dict]) -> list[tuple[str, str, str]]:
    """(repository, path, text) of every non-blank file of corpus rows (their repo, text and paths
    columns), in their order."""
    return [
        (row["repo"], path, text)
        for row in rows
        for path, text in formats.split_repo_sample(row["text"], row["paths"])
        if text.strip()
    ]


def files(path: str | Path) -> list[tuple[str, str, str]]:
    """(repository, path, text) of every non-blank file of a corpus, in its order."""
    return files_of(iter_rows(path, ("repo", "text", "paths")))
