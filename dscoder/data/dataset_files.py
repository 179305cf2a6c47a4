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


def spill(paths: list[Path], folder: Path, buckets: int, skips: Counter) -> list[Path]:
    """Spread the rows of `paths` over `buckets` JSON-lines files in `folder` by repository."""
    folder.mkdir(parents=True, exist_ok=True)
    outs = [gzip.open(folder / f"bucket-{i:05d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) for i in range(buckets)]
    try:
        for order, path in enumerate(paths):
            for row_number, (repo, file_path, content) in enumerate(iter_rows(path)):
                if not isinstance(repo, str) or not isinstance(file_path, str) or not isinstance(content, str):
                    skips["dataset_row_missing_field"] += 1
                    continue
                record = {"r": repo, "p": file_path, "c": content, "o": [order, row_number], "s": str(path)}
                outs[bucket_of(repo, buckets)].write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        for out in outs:
            out.close()
    return [folder / f"bucket-{i:05d}.jsonl.gz" for i in range(buckets)]


def read_bucket(path: Path, cfg: CollectConfig, skips: Counter) -> list[Repository]:
    """The repositories of one bucket, sorted by name, their files sorted by path."""
    grouped: dict[str, list[dict]] = defaultdict(list)
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
