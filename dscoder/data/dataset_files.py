"""Dataset files as repositories: parquet or JSON-lines tables with a repository, a path and a
content column, as The Stack ships them (`max_stars_repo_name`, `max_stars_repo_path`,
`content`).

A repository's files may be spread over many files (The Stack splits by language), so rows are
first spilled to bucket files by a hash of the repository name; each bucket then holds whole
repositories and is processed on its own, with memory bounded by the bucket size.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

from dscoder.repo.collect import CollectConfig, Repository, SourceFile, admit
from dscoder.errors import UserError

log = logging.getLogger("dscoder")

REPO_COLUMNS = ("repository", "repo", "repo_name", "max_stars_repo_name", "repository_name")
PATH_COLUMNS = ("path", "max_stars_repo_path", "file_path", "filepath")
CONTENT_COLUMNS = ("content", "text", "code")
DATASET_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".ndjson")


def is_dataset_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(DATASET_SUFFIXES)


def _pick(columns: list[str], options: tuple[str, ...], what: str, path: Path) -> str:
    for name in options:
        if name in columns:
            return name
    raise UserError(f"{path}: no {what} column (looked for {', '.join(options)}; found {', '.join(columns)})")


def check_dataset_file(path: Path) -> None:
    """What can be checked of a dataset file without reading it all, before a build starts: a
    parquet file's footer and columns; the first row of a JSON-lines file."""
    if path.name.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(path).schema_arrow.names  # reads the footer only
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{path}: unreadable parquet file ({exc})") from None
        for options, what in ((REPO_COLUMNS, "repository"), (PATH_COLUMNS, "path"), (CONTENT_COLUMNS, "content")):
            _pick(names, options, what, path)
        return
    rows = iter_rows(path)
    next(rows, None)
    rows.close()


def dataset_bytes(path: Path) -> int:
    """About how many bytes of rows a dataset file holds once read (from a parquet file's
    footer; a gzip file is taken to expand 4x)."""
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        return sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    return path.stat().st_size * (4 if path.name.lower().endswith(".gz") else 1)


def iter_rows(path: Path, batch_rows: int = 1024) -> Iterator[tuple[str, str, str]]:
    """(repository, path, content) rows of a dataset file, streamed."""
    if path.name.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(path)
            names = reader.schema_arrow.names
            columns = [_pick(names, REPO_COLUMNS, "repository", path), _pick(names, PATH_COLUMNS, "path", path),
                       _pick(names, CONTENT_COLUMNS, "content", path)]
            for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
                yield from zip(*(batch.column(c).to_pylist() for c in columns))
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{path}: unreadable parquet file ({exc})") from None
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    columns = None
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{number}: not a JSON object") from None
                if columns is None:
                    names = list(row)
                    columns = [_pick(names, REPO_COLUMNS, "repository", path), _pick(names, PATH_COLUMNS, "path", path),
                               _pick(names, CONTENT_COLUMNS, "content", path)]
                yield tuple(row.get(c) for c in columns)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UserError(f"{path}: unreadable dataset file ({exc})") from None


def bucket_of(repo: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(repo.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") % buckets


def spill(path: Path, number: int, folder: Path, buckets: int, skips: Counter, flush_bytes: int = 32_000_000) -> None:
    """Spread the rows of the dataset file `path` (the `number`th of the build) over `buckets`
    JSON-lines files in `folder` by repository. Rows are held until `flush_bytes` of them are
    waiting, then appended to their buckets as one gzip member each, so memory stays bounded
    and no more than one file is open at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    waiting: dict[int, list[str]] = defaultdict(list)
    size = 0

    def flush() -> None:
        for bucket in sorted(waiting):
            with gzip.open(folder / f"bucket-{bucket:05d}.jsonl.gz", "at", encoding="utf-8", compresslevel=1) as out:
                out.writelines(waiting[bucket])
        waiting.clear()

    for row_number, (repo, file_path, content) in enumerate(iter_rows(path)):
        if not isinstance(repo, str) or not isinstance(file_path, str) or not isinstance(content, str):
            skips["dataset_row_missing_field"] += 1
            continue
        record = json.dumps({"r": repo, "p": file_path, "c": content, "o": [number, row_number], "s": str(path)},
                            ensure_ascii=False) + "\n"
        waiting[bucket_of(repo, buckets)].append(record)
        size += len(record)
        if size >= flush_bytes:
            flush()
            size = 0
    flush()


def read_bucket(folders: list[Path], bucket: int, cfg: CollectConfig, skips: Counter) -> list[Repository]:
    """The repositories of one bucket (its rows from every dataset file, spilled into
    `folders`), sorted by name, their files sorted by path."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for folder in folders:
        path = folder / f"bucket-{bucket:05d}.jsonl.gz"
        if not path.is_file():
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                grouped[row["r"]].append(row)
    repos = []
    for name in sorted(grouped):
        rows = sorted(grouped[name], key=lambda r: (r["p"], r["o"]))
        files, seen = [], set()
        for row in rows:
            rel = row["p"].lstrip("/")
            if rel in seen:
                skips["duplicate_path"] += 1
                continue
            seen.add(rel)
            text = row["c"]
            language = admit(rel, len(text.encode("utf-8", "surrogatepass")), lambda: text[:200].split("\n", 1)[0], cfg, skips)
            if language is None:
                continue
            if "\x00" in text[:8192]:
                skips["binary"] += 1
                continue
            files.append(SourceFile(rel, text, language))
        sources = sorted({r["s"] for r in rows})
        repos.append(Repository(name, ",".join(sources), files))
    return repos
