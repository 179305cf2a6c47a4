"""Dataset files as repositories: parquet or JSON-lines tables with a repository, a path and a
content column, as The Stack ships them (`max_stars_repo_name`, `max_stars_repo_path`,
`content`).

A repository's files may be spread over many files (The Stack splits by language), so rows are
first spilled into buckets by a hash of the repository name; each bucket then holds whole
repositories and is processed on its own, with memory bounded by the bucket size. Each dataset
file is spilled into one file of its own, its rows grouped by bucket behind an index of offsets,
so that a bucket is read from every spill with a seek and one read each, and a crawl of 1,000
dataset files in 16,000 buckets makes 1,000 spill files, not 16 million.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import struct
import tempfile
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from dscoder import artifacts
from dscoder.errors import UserError
from dscoder.repo.collect import CollectConfig, Repository, SourceFile, admit

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
            columns = [
                _pick(names, REPO_COLUMNS, "repository", path),
                _pick(names, PATH_COLUMNS, "path", path),
                _pick(names, CONTENT_COLUMNS, "content", path),
            ]
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
                    columns = [
                        _pick(names, REPO_COLUMNS, "repository", path),
                        _pick(names, PATH_COLUMNS, "path", path),
                        _pick(names, CONTENT_COLUMNS, "content", path),
                    ]
                yield tuple(row.get(c) for c in columns)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UserError(f"{path}: unreadable dataset file ({exc})") from None


def bucket_of(repo: str, buckets: int) -> int:
    return (
        int.from_bytes(hashlib.blake2b(repo.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") % buckets
    )


# A spill file: the rows of one dataset file as JSON lines, grouped by bucket, then the index
# and a trailer:
#   [bucket 0's rows][bucket 1's rows]...[offsets: (buckets + 1) int64][skipped rows: JSON][trailer]
# A bucket's rows are one or more whole gzip members (read as one stream), at bytes
# offsets[b]:offsets[b + 1]. The trailer holds where the index starts and the JSON's length
# (uint64 each), then SPILL_MAGIC: a file without it, or of another length than it implies, was
# cut short.
SPILL_MAGIC = b"dsspill1"
_TRAILER = struct.Struct("<QQ8s")


def spill(path: Path, number: int, target: Path, buckets: int, flush_bytes: int = 32_000_000) -> None:
    """Spill the rows of the dataset file `path` (the `number`th of the build) by repository into
    `buckets` buckets of one spill file, `target`, written whole or not at all. Rows are held
    until `flush_bytes` of them are waiting, then written as one gzip member per bucket to an
    unnamed scratch file beside `target` (gone with the process, even a killed one); at the end
    the members are copied into `target` bucket by bucket. Memory stays bounded by
    `flush_bytes` and 24 bytes per member."""
    skips: Counter = Counter()
    waiting: dict[int, list[bytes]] = defaultdict(list)
    members = array("q")  # (bucket, offset in the scratch file, length) per gzip member
    with artifacts.output_path(target, force=True) as partial, tempfile.TemporaryFile(dir=target.parent) as scratch:

        def flush() -> None:
            for bucket in sorted(waiting):
                member = gzip.compress(b"".join(waiting[bucket]), compresslevel=1, mtime=0)
                members.extend((bucket, scratch.tell(), len(member)))
                scratch.write(member)
            waiting.clear()

        size = 0
        for row_number, (repo, file_path, content) in enumerate(iter_rows(path)):
            if not isinstance(repo, str) or not isinstance(file_path, str) or not isinstance(content, str):
                skips["dataset_row_missing_field"] += 1
                continue
            record = (
                json.dumps(
                    {"r": repo, "p": file_path, "c": content, "o": [number, row_number], "s": str(path)},
                    ensure_ascii=False,
                )
                + "\n"
            )
            try:
                data = record.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (a JSON "\ud800" escape): not text
                skips["dataset_row_not_unicode"] += 1
                continue
            waiting[bucket_of(repo, buckets)].append(data)
            size += len(record)
            if size >= flush_bytes:
                flush()
                size = 0
        flush()
        table = np.frombuffer(members, dtype=np.int64).reshape(-1, 3)  # (members, 3)
        offsets = np.zeros(buckets + 1, dtype="<i8")
        np.cumsum(np.bincount(table[:, 0], weights=table[:, 2], minlength=buckets).astype(np.int64), out=offsets[1:])
        skipped = json.dumps(dict(skips)).encode()
        with open(partial, "wb") as out:
            for _bucket, offset, length in table[np.argsort(table[:, 0], kind="stable")].tolist():
                scratch.seek(offset)
                out.write(scratch.read(length))
            out.write(offsets.tobytes())
            out.write(skipped)
            out.write(_TRAILER.pack(int(offsets[-1]), len(skipped), SPILL_MAGIC))


def _spill_layout(f: BinaryIO) -> tuple[int, int, int] | None:
    """(index offset, buckets, JSON length) of an open spill file; None when it was cut short."""
    size = f.seek(0, 2)
    if size < _TRAILER.size:
        return None
    f.seek(size - _TRAILER.size)
    index_at, json_length, magic = _TRAILER.unpack(f.read(_TRAILER.size))
    entries, rest = divmod(size - _TRAILER.size - json_length - index_at, 8)
    if magic != SPILL_MAGIC or rest or entries < 2:
        return None
    return index_at, entries - 1, json_length


def spill_skips(target: Path) -> dict | None:
    """The rows a finished spill file skipped, by reason; None when it is missing or cut short
    (to be spilled again)."""
    try:
        with open(target, "rb") as f:
            layout = _spill_layout(f)
            if layout is None:
                return None
            index_at, buckets, json_length = layout
            f.seek(index_at + 8 * (buckets + 1))
            return json.loads(f.read(json_length))
    except FileNotFoundError:
        return None


def _spilled_rows(path: Path, bucket: int) -> Iterator[dict]:
    """The rows of `bucket` in the spill file `path`."""
    try:
        with open(path, "rb") as f:
            layout = _spill_layout(f)
            if layout is None:
                raise UserError(
                    f"{path}: spill file cut short after the build spilled it (the build folder was "
                    "damaged); start the build over with --force"
                )
            f.seek(layout[0] + 8 * bucket)
            start, end = struct.unpack("<qq", f.read(16))
            f.seek(start)
            data = f.read(end - start)
    except FileNotFoundError:
        raise UserError(
            f"{path}: spill file missing (the build folder was damaged); start the build over with --force"
        ) from None
    if data:
        for line in gzip.decompress(data).decode("utf-8").split("\n")[:-1]:
            yield json.loads(line)


def read_bucket(spills: list[Path], bucket: int, cfg: CollectConfig, skips: Counter) -> list[Repository]:
    """The repositories of one bucket (its rows from every dataset file's spill file), sorted by
    name, their files sorted by path."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for path in spills:
        for row in _spilled_rows(path, bucket):
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
            language = admit(
                rel,
                len(text.encode("utf-8", "surrogatepass")),
                lambda text=text: text[:200].split("\n", 1)[0],
                cfg,
                skips,
            )
            if language is None:
                continue
            if "\x00" in text[:8192]:
                skips["binary"] += 1
                continue
            files.append(SourceFile(rel, text, language))
        sources = sorted({r["s"] for r in rows})
        repos.append(Repository(name, ",".join(sources), files))
    return repos
