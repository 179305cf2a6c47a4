"""Training data: corpora tokenized once into memory-mapped token files, FIM applied per
document, packed into fixed-length sequences, mixed by weight, sharded by data-parallel rank.

Cache layout (one folder per corpus, reused while its key matches):
```
CACHE/<key>/tokens.bin     token ids (uint16 when the vocabulary fits, else uint32)
CACHE/<key>/mask.bin       uint8 loss mask (instruct data only)
CACHE/<key>/meta.json      the key, documents and tokens
```
Each document becomes `BOS doc EOS` (after the FIM transform). Window k is
tokens[k*L : k*L + L + 1], so inputs and targets come from one window. A seeded hash of the
window index holds out `eval_fraction` of the windows for the evaluation loss: those tokens are
never trained on (holding out whole documents fails on repository-level corpora, where a few
documents hold most of the tokens).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterable, Iterator

import numpy as np

from dscoder import artifacts, formats
from dscoder.config import AT_LEAST_ONE, Range
from dscoder.errors import UserError
from dscoder.train.fim import FIMConfig, decide, pieces, rewrite
from dscoder.train.fim import apply as apply_fim

log = logging.getLogger("dscoder")


@dataclass(frozen=True)
class DataConfig:
    """What the trainer reads and how it is cut."""

    sources: tuple[str, ...] = ()
    """Corpus folders, each optionally `DIR:WEIGHT` (weights are relative; default 1)."""
    seq_len: Annotated[int, Range(8)] = 512
    """Tokens per training sequence."""
    eval_fraction: Annotated[float, Range(0, 0.5)] = 0.01
    """Share of sequences held out for the evaluation loss."""
    cache_dir: str = ""
    """Where token files are cached (default: RUN/cache)."""
    tokenize_batch: Annotated[int, AT_LEAST_ONE] = 256
    """Documents tokenized per batch."""


def parse_source(spec: str) -> tuple[str, float]:
    """`DIR` or `DIR:WEIGHT`."""
    path, sep, weight = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        try:
            value = float(weight)
        except ValueError:
            raise UserError(f"--data {spec}: the weight after ':' must be a number") from None
        if value <= 0:
            raise UserError(f"--data {spec}: the weight must be positive")
        return path, value
    return spec, 1.0


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def held_out(count: int, fraction: float) -> np.ndarray:
    """Which of `count` windows are held out for evaluation (a fixed hash of the index)."""
    index = np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (index + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


class TokenFile:
    """A cached corpus: token ids (and a loss mask) as memory maps, cut into windows."""

    def __init__(self, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        self.tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r")
        self.mask = (
            np.memmap(folder / "mask.bin", dtype=np.uint8, mode="r") if (folder / "mask.bin").is_file() else None
        )

    def windows(self, seq_len: int, eval_fraction: float, split: str) -> np.ndarray:
        """Indices of the windows of `split` ("train" or "eval")."""
        count = max(0, (len(self.tokens) - 1) // seq_len)
        evaluation = held_out(count, eval_fraction)
        return np.flatnonzero(evaluation if split == "eval" else ~evaluation)

    def window(self, k: int, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
        start = k * seq_len
        tokens = np.asarray(self.tokens[start : start + seq_len + 1], dtype=np.int64)
        mask = None if self.mask is None else np.asarray(self.mask[start : start + seq_len + 1], dtype=np.bool_)
        return tokens, mask


Encoded = tuple[list[int], list[int] | None]  # token ids and, for instruct data, a loss mask


def _damage(folder: Path, key: dict) -> str | None:
    """None when `folder` holds the intact cache of `key`; "" when it holds another key's; else
    what is wrong with it."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta["key"] != key:
            return ""
        sizes = {"tokens.bin": meta["tokens"] * np.dtype(meta["dtype"]).itemsize}
        if (folder / "mask.bin").is_file():
            sizes["mask.bin"] = meta["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"meta.json unreadable: {exc}"
    for name, size in sizes.items():
        found = (folder / name).stat().st_size if (folder / name).is_file() else None
        if found != size:
            return f"{name} has {found} bytes, {size} expected"
    return None


def build_cache(
    folder: Path,
    key: dict,
    documents: Iterable[str],
    encode: Callable[[list[str]], list[Encoded]],
    batch: int,
    vocab_size: int,
) -> Path:
    """Tokenize `documents` into `folder` unless an intact cache with the same key is there; a
    damaged one (cut short, unreadable) is built again."""
    if (folder / "meta.json").is_file():
        damage = _damage(folder, key)
        if damage is None:
            return folder
        if damage:
            log.warning("token cache %s is damaged (%s): building it again", folder, damage)
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    with artifacts.output_dir(folder, force=True) as tmp:
        _write_cache(tmp, key, documents, encode, batch, dtype)
    return folder


def _write_cache(
    tmp: Path, key: dict, documents: Iterable[str], encode: Callable[[list[str]], list[Encoded]], batch: int, dtype: str
) -> None:
    from dscoder.console import progress

    has_mask, documents_done, tokens_done = False, 0, 0
    with (
        open(tmp / "tokens.bin", "wb") as out,
        open(tmp / "mask.bin", "wb") as masks,
        progress(desc=f"tokenizing {Path(key.get('source', '')).name}", unit=" docs") as bar,
    ):
        pending: list[str] = []

        def flush():
            nonlocal has_mask, documents_done, tokens_done
            for ids, mask in encode(pending):
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                if mask is not None:
                    has_mask = True
                    masks.write(np.asarray(mask, dtype=np.uint8).tobytes())
                documents_done += 1
                tokens_done += len(ids)
            bar.update(len(pending))
            pending.clear()

        for doc in documents:
            pending.append(doc)
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
    if not has_mask:
        (tmp / "mask.bin").unlink()
    if tokens_done == 0:
        raise UserError(f"{key.get('source')}: no tokens (an empty corpus?)")
    artifacts.write_json(
        tmp / "meta.json", {"key": key, "dtype": dtype, "documents": documents_done, "tokens": tokens_done}
    )


def pretraining_encoder(
    tokenizer, fim: FIMConfig, seed: int, source: str, seq_len: int = 0
) -> Callable[[list[str]], list[Encoded]]:
    """FIM per document (seeded by its position), then `BOS ids EOS`; with `fim.fit_windows`,
    per piece cut to fit the training window of `seq_len` tokens it starts in."""
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sentinels = [tokenizer.convert_tokens_to_ids(t) for t in (formats.FIM_BEGIN, formats.FIM_HOLE, formats.FIM_END)]
    state = {"index": 0, "offset": 0}

    def rng() -> random.Random:
        state["index"] += 1
        return random.Random(f"{seed}:{source}:{state['index'] - 1}")

    def encode(texts: list[str]) -> list[Encoded]:
        # Every document (or piece of one) becomes BOS ids EOS; pieces of a document stay together.
        owners, rewritten = [], []
        for number, text in enumerate(texts):
            doc_rng = rng()
            for piece in pieces(text, fim.max_chars):
                owners.append(number)
                rewritten.append(apply_fim(piece, fim, doc_rng))
        out: list[list[int]] = [[] for _ in texts]
        for owner, encoding in zip(owners, backend.encode_batch(rewritten, add_special_tokens=False)):
            out[owner] += [bos, *encoding.ids, eos]
        return [(ids, None) for ids in out]

    def encode_fitted(texts: list[str]) -> list[Encoded]:
        # Pieces depend on where the stream stands in its window, so documents go in order; each
        # is tokenized once, in a batch, and its pieces are cut from that encoding.
        out = []
        for text, encoding in zip(texts, backend.encode_batch(texts, add_special_tokens=False)):
            ids, mask = _fitted_pieces(
                text, _Tokens(text, encoding, backend, sentinels), fim, rng(), state["offset"], seq_len, bos, eos
            )
            state["offset"] += len(ids)
            out.append((ids, mask))
        return out

    if fim.fit_windows and seq_len < MIN_FITTED_LENGTH:
        raise UserError(f"fim.fit_windows needs a sequence length of at least {MIN_FITTED_LENGTH} tokens")
    return encode_fitted if fim.fit_windows else encode


PIECE_SLACK = 8
MIN_FITTED_LENGTH = 4 * PIECE_SLACK  # the shortest window FIM pieces can be fitted to
"""Tokens a piece leaves free in its window: BOS, EOS, three sentinels and the few tokens that
tokenize differently once a piece is cut out and rearranged."""


class _Tokens:
    """A document's tokens, and those of its pieces and their FIM rearrangements: slices of the
    document's encoding where every cut falls at a line start (or an end of the document), else
    the piece tokenized anew. A line start begins a token, and the text on either side of it
    tokenizes alone as it does in the document (the pre-tokenizer always ends a token at a
    newline). Elsewhere a cut can fall at a token start and still tokenize differently on its
    own: a vocabulary that splits the spaces of `x  ü` in two still ends `x  ` alone in `'  '`."""

    def __init__(self, text: str, encoding, backend, sentinels: list[int]):
        self.text, self.ids, self.offsets = text, encoding.ids, encoding.offsets
        self.starts = [a for a, _ in self.offsets]
        self.backend, self.sentinels = backend, sentinels

    def _at(self, pos: int) -> int | None:
        """The index of the token at character `pos` when `pos` is a line start or an end of the
        text and a token starts there, none before it reaching past `pos`; else None."""
        if pos == len(self.text):
            return len(self.ids)
        if pos > 0 and self.text[pos - 1] != "\n":
            return None
        i = bisect.bisect_left(self.starts, pos)
        if i == len(self.starts) or self.starts[i] != pos or (i > 0 and self.offsets[i - 1][1] > pos):
            return None
        return i

    def piece(self, begin: int, end: int, decision: tuple[int, int, formats.FIMMode] | None) -> list[int]:
        """Tokens of text[begin:end] as `fim.decide`'s `decision` (relative to the piece) has it."""
        if decision is None:
            cuts = [begin, end]
        elif decision[2] == "psm":
            cuts = [begin, begin + decision[0], begin + decision[1], end]
        else:  # SPM keeps prefix and middle together
            cuts = [begin, begin + decision[1], end]
        at = [self._at(c) for c in cuts]
        if None in at:
            return self.backend.encode(rewrite(self.text[begin:end], decision), add_special_tokens=False).ids
        if decision is None:
            return self.ids[at[0] : at[1]]
        fim_begin, hole, fim_end = self.sentinels
        if decision[2] == "psm":
            p, a, b, s = at
            return [fim_begin, *self.ids[p:a], hole, *self.ids[b:s], fim_end, *self.ids[a:b]]
        p, b, s = at
        return [fim_begin, hole, *self.ids[b:s], fim_end, *self.ids[p:b]]


def _fitted_pieces(
    text: str, tokens: _Tokens, fim: FIMConfig, rng: random.Random, offset: int, seq_len: int, bos: int, eos: int
) -> tuple[list[int], list[int]]:
    """`text` as pieces `BOS (FIM'd piece) EOS`, each cut at a line end to fit the room left in
    the window of `seq_len` tokens where it starts, given the stream's `offset`; padding (EOS,
    mask 0) fills a window's end too short for a piece. Returns ids and loss mask."""
    starts = tokens.starts
    line_starts = [0, *(m.end() for m in re.finditer("\n", text) if m.end() < len(text))]
    ids: list[int] = []
    mask: list[int] = []
    begin, shortest = 0, max(seq_len // 8, 2 * PIECE_SLACK)  # a shorter window end is padding
    while begin < len(text):
        room = seq_len - (offset + len(ids)) % seq_len
        if room < shortest:
            ids += [eos] * room
            mask += [0] * room
            continue
        limit = bisect.bisect_left(starts, begin) + room - PIECE_SLACK
        fits = len(text) if limit >= len(starts) else starts[limit]  # the most the window takes
        end = min(fits, begin + fim.max_chars) if fim.max_chars else fits
        if end < len(text):
            at = bisect.bisect_right(line_starts, end) - 1
            if line_starts[at] > begin:
                end = line_starts[at]
            elif at + 1 < len(line_starts) and line_starts[at + 1] <= fits:
                end = line_starts[at + 1]  # a line longer than max_chars is a piece of its own
            elif room < seq_len:  # the line does not fit the rest of this window: start the next
                ids += [eos] * room
                mask += [0] * room
                continue
            else:  # a line longer than a whole window: cut inside it, at a token start
                end = fits
        decision = decide(text[begin:end], fim, rng)
        piece = [bos, *tokens.piece(begin, end, decision), eos]
        if len(piece) > room and decision is not None:  # rearranged, it tokenizes longer: keep it plain
            piece = [bos, *tokens.piece(begin, end, None), eos]
        ids += piece
        mask += [1] * len(piece)
        begin = end
    return ids, mask


def corpus_cache(source: str, tokenizer, fim: FIMConfig, seed: int, cfg: DataConfig, cache_root: Path) -> Path:
    """The token cache of one corpus folder (built on first use)."""
    from dscoder.data import corpus

    path = Path(source)
    if not corpus.is_corpus(path):
        raise UserError(f"--data {source}: not a corpus folder (make one with `dscoder data build`)")
    manifest = json.loads((path / corpus.MANIFEST).read_text(encoding="utf-8"))
    key = {
        "source": str(path.resolve()),
        "corpus_created": (path / "stats.json").stat().st_mtime_ns,
        "corpus_inputs": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "fim": asdict(fim),
        "seed": seed,
        "format": 3,
    }
    if fim.fit_windows:
        key["seq_len"] = cfg.seq_len
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    encode = pretraining_encoder(tokenizer, fim, seed, str(path.resolve()), cfg.seq_len)
    return build_cache(
        cache_root / f"{path.name}-{name}", key, corpus.iter_texts(path), encode, cfg.tokenize_batch, len(tokenizer)
    )


class Mixture:
    """Sequences drawn from several token files by weight, in a deterministic order.

    Global sample i picks its source from a generator seeded with (seed, i); within a source,
    sequences follow a seeded permutation per epoch. `state` (samples drawn so far and per
    source) is all a checkpoint needs to continue exactly. Data-parallel rank r of W takes
    samples r*B .. r*B+B-1 of every global batch of W*B, so the stream does not depend on W.
    """

    def __init__(
        self, files: list[TokenFile], weights: list[float], seq_len: int, seed: int, eval_fraction: float = 0.0
    ):
        self.files, self.seq_len, self.seed, self.eval_fraction = files, seq_len, seed, eval_fraction
        self.train_windows = [f.windows(seq_len, eval_fraction, "train") for f in files]
        self.counts = [len(w) for w in self.train_windows]
        usable = [w if n else 0.0 for w, n in zip(weights, self.counts)]
        if not any(usable):
            raise UserError(
                f"no training sequence of {seq_len + 1} tokens in the data (a tiny corpus, or --seq-len too long)"
            )
        self.cumulative = np.cumsum(usable) / sum(usable)
        self.state = {"drawn": 0, "per_source": [0] * len(files)}
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        if (source, epoch) not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != source}
            self._perms[(source, epoch)] = np.random.default_rng([self.seed, source, epoch]).permutation(
                self.counts[source]
            )
        return self._perms[(source, epoch)]

    def _draw(self) -> tuple[int, int]:
        u = np.random.default_rng([self.seed, 1_000_003, self.state["drawn"]]).random()
        source = min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.files) - 1)
        n = self.state["per_source"][source]
        self.state["drawn"] += 1
        self.state["per_source"][source] += 1
        position = int(self._permutation(source, n // self.counts[source])[n % self.counts[source]])
        return source, int(self.train_windows[source][position])

    def next_batch(self, batch_size: int, rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (batch_size, L+1) tokens and loss mask of the next global batch."""
        picks = [self._draw() for _ in range(batch_size * world)][rank * batch_size : (rank + 1) * batch_size]
        return _stack([self.files[s].window(k, self.seq_len) for s, k in picks], self.seq_len)


def _stack(windows: list[tuple[np.ndarray, np.ndarray | None]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.stack([t for t, _ in windows])
    mask = np.stack([m if m is not None else np.ones(seq_len + 1, dtype=np.bool_) for _, m in windows])
    return tokens, mask


def eval_batches(mixture: Mixture, batch_size: int, batches: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Up to `batches` batches of held-out windows, taken evenly from every source (fixed)."""
    files, seq_len = mixture.files, mixture.seq_len
    per_source = [f.windows(seq_len, mixture.eval_fraction, "eval") for f in files]
    want = batch_size * batches
    picks = [(i, k) for i, ws in enumerate(per_source) for k in ws[: max(1, want // max(len(files), 1))]]
    windows = [files[i].window(int(k), seq_len) for i, k in picks][:want]
    for start in range(0, len(windows) - batch_size + 1, batch_size):
        yield _stack(windows[start : start + batch_size], seq_len)
