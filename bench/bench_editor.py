"""An editor's traffic: a Vim session with llama.vim, replayed against dscoder serve and llama.cpp.

The session runs in real time against `dscoder serve` (a subprocess, over HTTP); the prompts it
answered then go to llama.cpp (llama-cpp-python, in this process) in the same run.

What is replayed. The client is llama.vim's autoload/llama.vim as of commit a1c8e6e4 (2026-01-31,
github.com/ggml-org/llama.vim), rewritten here line for line where it decides what to send:

- every cursor move in insert mode (CursorMovedI) calls `llama#fim`, which sends `/infill` with
  `{id_slot: 0, input_prefix, input_suffix, input_extra, prompt, n_predict: 128, stop: [],
  n_indent, top_k: 40, top_p: 0.90, samplers: [top_k, top_p, infill], stream, cache_prompt: true,
  t_max_prompt_ms: 500, t_max_predict_ms: 250 (1000 for a speculative request), response_fields}`
  (its defaults n_prefix 256, n_suffix 64, n_predict 128, t_max_prompt_ms 500, t_max_predict_ms
  1000, max_line_suffix 8); `input_prefix` is the 256 lines before the cursor's line joined with
  "\\n" plus "\\n", `prompt` the cursor's line before the cursor, `input_suffix` the rest of that
  line, "\\n", the next 64 lines joined with "\\n", "\\n" (a line of blanks only: prompt and rest
  empty, n_indent 0); no `filename` (dscoder heads the file "untitled" when there is input_extra);
- one request in flight: a move while one is unanswered does not stop it (the `job_stop` in
  llama#fim is never reached) but arms a 100 ms timer that retries, and a later move re-arms it,
  so only the latest of the keystrokes typed meanwhile is sent, once the answer is in: the others
  are `superseded` (dropped). `--cancel-stale` instead closes the unanswered request and sends the
  new one at once (as clients that abort do; the server then sees disconnects);
- an answer shown at the cursor is followed by a speculative request for the text as if the
  suggestion were accepted (`llama#fim` with `prev`, from `s:fim_try_hint`); answers are cached
  by context (250 entries) and a cached context sends nothing;
- the ring buffer of extra context (ring_n_chunks 16, ring_chunk_size 64, ring_scope 1024,
  ring_update_ms 1000): chunks of up to 33 lines are picked on BufEnter, BufLeave and BufWritePost
  of unmodified buffers, on yank, and after a request whose line is more than 32 lines from the
  last pick (from 1024 to 256 lines above it and 64 to 128 below); every second, in normal mode or
  after 3 s without a move, the oldest queued chunk enters the ring (its oldest chunk leaves when
  full) and llama.vim sends `{id_slot: 0, input_prefix: "", input_suffix: "", input_extra,
  prompt: "", n_predict: 0, temperature: 0.0, samplers: [], stream: false, cache_prompt: true,
  t_max_prompt_ms: 1, t_max_predict_ms: 1, response_fields: [""]}` without waiting for anything;
  every `/infill` carries the ring as `input_extra: [{text, time, filename}]`.
llama.vscode (commit 3938fb35) sends the same fields, `id_slot: 0` included.

Departures, for measuring: `/infill` is sent with `stream: true`, to time the first text (the
first event with text; an answer without text: its end); dscoder streams an editor's insertion by
whole lines, so its first text comes with the first line, and its first token is read from the
server's `timings.prompt_ms` (from the request's arrival); "tokens_evaluated" is added to llama.
vim's `response_fields`; the ring holds `--ring-chunks` chunks (default 4, llama.vim 16) so that
it fills and evicts within a short session and prompts stay near 2,000 tokens plus a few chunks;
Enter indents the new line as the file has it (a perfect autoindent). With random weights an
answer mostly runs to its 128 tokens: t_max_predict_ms stops one only after a line break.

The session, on the standard library's argparse.py (prompts of about 3,000 tokens with these
n_prefix/n_suffix, fitted by the server to its --infill-window of 2,048): at sites 200 lines apart,
a jump there (`{N}G`, then `A` at the end of the line above the site: a `jump` keystroke), the
next lines deleted (`dd`; then `k`, `A`: the first keystroke after it is `delete-line`), then
typed back as the file has them: Enter (`newline`) and one character at a time (`char`), 150 ms
apart, 1.5 s at each line end, then Esc and `:w`; before each later site a visit to textwrap.py
(`:e`, a yank of 6 lines, 4 s, back), whose chunks enter the ring. A request is tagged with the
largest edit since the previous keystroke request (jump > delete-line > newline > char): with a
busy server its prompt carries several keystrokes' edits. Keystrokes never answered count as
dropped under their own kind.

llama.cpp: the same prompt token ids, built with dscoder's prompt layer (dscoder.infer.prompts.
insertion, as the server calls it; their lengths are checked against the server's
`tokens_evaluated`), of every answered request in the order sent, one after another on an
otherwise idle engine (its best case: no stale requests, no concurrent ring warm-ups), greedy,
as many tokens as dscoder produced (at least one; a ring warm-up: its prompt and one token);
llama-cpp-python keeps the longest common prefix of the previous prompt, as llama.cpp's server
with cache_prompt. Both engines on 2 threads; models with random weights: the tiny preset (float32
folder, q8_0 GGUF) and the 1.3B preset (int8 folder, q8_0 GGUF of the same weights).

    python bench/bench_editor.py [--lines 8] [--n-predict 128] [--skip-1.3b] [--skip-llama-cpp] [--work DIR]
        [--t-max-prompt-ms 500] [--ring-chunks 4] [--cancel-stale] [--port 0] [--seed 0]
        [--server-arg=--max-batch=4 ...] [--out records.jsonl]

--work keeps the prepared models in DIR (tok/, tiny/, tiny-q8_0.gguf, bf16/, int8/, q8_0.gguf)
and reuses them; the servers' logs go there too. Printed per model and kind: requests answered
and keystrokes dropped; p50/p95 times from the request's start: dscoder's first text, first token
and answer (the stream's end), llama.cpp's first token and answer; the ratios of the p50s
(llama.cpp / dscoder: above 1, dscoder is faster); tokens prefilled and cached per request,
answers marked truncated (the tiny preset's 1,024-token context leaves the ring's chunks out);
the machine's load (1-minute average) after each engine's part, since other work on the machine
moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from dscoder import tokenizer as tokenizer_lib
from dscoder.infer import prompts
from dscoder.infer.engine import encode_prompt
from dscoder.infer.llama_api import UNNAMED
from dscoder.infer.server import ServeLimits

STDLIB = Path(sysconfig.get_paths()["stdlib"])
EDITED, OTHER = "argparse.py", "textwrap.py"
SHARED = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "deepseek-coder-vocab"
    / "ggml-vocab-deepseek-coder.gguf"
)
THREADS = 2

# llama.vim's defaults (s:default_config) and constants
N_PREFIX, N_SUFFIX, N_PREDICT = 256, 64, 128
T_MAX_PREDICT_MS, T_FIRST_PREDICT_MS = 1000, 250
MAX_LINE_SUFFIX, MAX_CACHE_KEYS = 8, 250
RING_CHUNK_SIZE, RING_SCOPE, RING_UPDATE_S, RING_QUEUE, RING_IDLE_S = 64, 1024, 1.0, 16, 3.0
RETRY_S = 0.1  # llama#fim's timer while a request is in flight
PICK_DISTANCE = 32  # lines the cursor moves before a request picks chunks again
FIM_FIELDS = [
    "content",
    "timings/prompt_n",
    "timings/prompt_ms",
    "timings/prompt_per_token_ms",
    "timings/prompt_per_second",
    "timings/predicted_n",
    "timings/predicted_ms",
    "timings/predicted_per_token_ms",
    "timings/predicted_per_second",
    "truncated",
    "tokens_cached",
    "tokens_evaluated",
]  # the last one added here, to check the prompt ids

# the typist
KEY_S, LINE_END_S, COMMAND_S, VISIT_S = 0.15, 1.5, 0.6, 4.0
FIRST_SITE, JUMP_LINES, LINES_PER_SITE, YANK_LINES = 400, 200, 4, 6
KINDS = ("char", "newline", "delete-line", "jump")  # keystrokes, by how much of the prompt they change
ROWS = KINDS + ("speculative", "ring")


@dataclass
class Record:
    """One keystroke, speculative request or ring warm-up, and what became of it."""

    kind: str
    at_s: float  # since the session started
    fate: str = "waiting"  # answered, superseded, cancelled, cached, skipped, refused, error
    tag: str = ""  # the largest edit the request's prompt carries
    sent_s: float | None = None
    first_ms: float | None = None  # from the request's start
    answer_ms: float | None = None
    content: str = ""
    reply: dict = field(default_factory=dict)  # the server's final event (llama.vim's response_fields)
    error: str = ""
    prompt_tokens: int | None = None  # the ids built here
    llama_first_ms: float | None = None
    llama_answer_ms: float | None = None
    body: dict | None = field(default=None, repr=False)
    keys: list[str] = field(default_factory=list, repr=False)  # the contexts its answer is cached under

    def summary(self) -> dict:
        out = dataclasses.asdict(self)
        del out["body"], out["keys"]
        return out


class Clock:
    """Seconds since the session started; `wait` keeps the typist's rhythm whatever the server does."""

    def __init__(self):
        self.start, self.next = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start

    async def wait(self, seconds: float) -> None:
        self.next += seconds
        await asyncio.sleep(max(0.0, self.next - self.now()))


def leading_blanks(text: str) -> str:
    return text[: len(text) - len(text.lstrip(" \t"))]


def chunk_sim(c0: list[str], c1: list[str]) -> float:
    """s:chunk_sim: how alike two chunks are (0 to 1), by their words."""
    words0 = [w for w in re.split(r"[^0-9A-Za-z_]+", "\n".join(c0)) if w]
    words1 = [w for w in re.split(r"[^0-9A-Za-z_]+", "\n".join(c1)) if w]
    if not words0 and not words1:
        return 1.0
    seen = set(words0)
    return 2.0 * sum(w in seen for w in words1) / (len(words0) + len(words1))


@dataclass
class Chunk:
    data: list[str]
    text: str
    time: list[int]  # Vim's reltime()
    filename: str


@dataclass
class Context:
    """s:fim_ctx_local's result."""

    prefix: str
    middle: str
    suffix: str
    indent: int
    line_suffix: str

    def key(self, prefix: str | None = None) -> str:
        return (self.prefix if prefix is None else prefix) + self.middle + "Î" + self.suffix


class Vim:
    """The buffers, the cursor (`line` from 1, `col` from 0, as llama.vim reads them), the mode and
    the autocommands llama.vim hooks; `plugin` is told of each."""

    def __init__(self, files: dict[str, list[str]], name: str):
        self.files, self.name = files, name
        self.line, self.col, self.mode = 1, 0, "n"
        self.modified: set[str] = set()
        self.marks: dict[str, int] = {}  # the line each buffer was left at
        self.plugin: LlamaVim | None = None

    @property
    def lines(self) -> list[str]:
        return self.files[self.name]

    def getline(self, first: int, last: int | None = None):
        """Vim's getline(): one line ("" outside the buffer) or the lines first..last."""
        if last is None:
            return self.lines[first - 1] if 1 <= first <= len(self.lines) else ""
        return self.lines[max(first, 1) - 1 : min(last, len(self.lines))]

    def around_cursor(self) -> list[str]:
        half = RING_CHUNK_SIZE // 2
        return self.getline(max(1, self.line - half), min(self.line + half, len(self.lines)))

    def _to_first_blank(self) -> None:
        self.col = len(leading_blanks(self.getline(self.line)))
        self.plugin.on_move()

    # normal mode
    def open(self) -> None:
        self.plugin.buf_enter()

    def goto(self, line: int) -> None:
        self.line = line
        self._to_first_blank()

    def move(self, lines: int) -> None:
        self.goto(self.line + lines)

    def delete_line(self) -> None:
        del self.lines[self.line - 1]
        self.modified.add(self.name)
        self.line = min(self.line, len(self.lines))
        self._to_first_blank()

    def write(self) -> None:
        self.modified.discard(self.name)
        self.plugin.buf_write()

    def edit(self, name: str, line: int | None = None) -> None:
        """`:e name` (`:e +line name`): the cursor on the line it was left at in that buffer, or `line`."""
        self.plugin.buf_leave()
        self.marks[self.name] = self.line
        self.name = name
        self.goto(line or self.marks.get(name, 1))
        self.plugin.buf_enter()

    def yank(self, lines: int) -> None:
        self.plugin.yank(self.getline(self.line, self.line + lines - 1))

    def append(self, kind: str) -> None:
        """`A`: insert mode at the end of the line, a keystroke of `kind`."""
        self.mode = "i"
        self.col = len(self.getline(self.line))
        self.plugin.keystroke(kind)

    # insert mode
    def escape(self) -> None:
        """Esc: a line of autoindent only is left empty, as Vim does."""
        self.plugin.fim_hide()  # InsertLeavePre
        if self.mode == "i" and not self.getline(self.line).strip(" \t"):
            self.lines[self.line - 1] = ""
        self.mode = "n"
        self.col = max(0, self.col - 1)
        self.plugin.on_move()

    def enter(self, indent: str) -> None:
        """Enter: the line split at the cursor (a line of indentation only left empty), the new
        line indented by `indent`."""
        current = self.getline(self.line)
        head, tail = current[: self.col], current[self.col :]
        self.lines[self.line - 1] = head if head.strip(" \t") else ""
        self.lines.insert(self.line, indent + tail)
        self.line, self.col = self.line + 1, len(indent)
        self.modified.add(self.name)
        self.plugin.keystroke("newline")

    def type(self, char: str) -> None:
        current = self.getline(self.line)
        self.lines[self.line - 1] = current[: self.col] + char + current[self.col :]
        self.col += 1
        self.modified.add(self.name)
        self.plugin.keystroke("char")


class LlamaVim:
    """llama.vim's FIM client and ring buffer: what it sends, when, and what it does with answers."""

    def __init__(
        self,
        vim: Vim,
        transport: "Transport",
        rng: random.Random,
        ring_chunks: int,
        t_max_prompt_ms: int,
        cancel_stale: bool,
        n_predict: int = N_PREDICT,
    ):
        self.vim, self.transport, self.rng, self.n_predict = vim, transport, rng, n_predict
        self.ring_chunks, self.t_max_prompt_ms, self.cancel_stale = ring_chunks, t_max_prompt_ms, cancel_stale
        self.clock = transport.clock
        self.ring: list[Chunk] = []
        self.queued: list[Chunk] = []
        self.pos_y_pick, self.indent_last, self.t_last_move = -9999, -1, 0.0
        self.job: asyncio.Task | None = None  # the request in flight, and its record
        self.job_record: Record | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_record: Record | None = None
        self.hint_shown, self.fim_data = False, {}
        self.cache: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.edits: list[str] = []  # keystroke kinds since the last keystroke request
        self.records: list[Record] = []

    # Vim's events
    def on_move(self) -> None:
        """s:on_move (CursorMoved, CursorMovedI)."""
        self.t_last_move = self.clock.now()
        self.fim_hide()
        self.try_hint(self.vim.col, self.vim.line)

    def keystroke(self, kind: str) -> None:
        """CursorMovedI: s:on_move, then llama#fim at the cursor."""
        record = self.new_record(kind)
        self.edits.append(kind)
        self.on_move()
        self.fim(None, [], record)

    def fim_hide(self) -> None:
        self.hint_shown = False

    def buf_enter(self) -> None:
        asyncio.get_running_loop().call_later(0.1, lambda: self.pick_chunk(self.vim.around_cursor(), True, True))

    def buf_leave(self) -> None:
        self.pick_chunk(self.vim.around_cursor(), True, True)

    buf_write = buf_leave

    def yank(self, text: list[str]) -> None:
        self.pick_chunk(text, False, True)

    def new_record(self, kind: str) -> Record:
        self.records.append(Record(kind, self.clock.now()))
        return self.records[-1]

    # the local context and the cache of answers
    def context(self, x: int, y: int, prev: list[str]) -> Context:
        """s:fim_ctx_local at column x of line y, as if `prev` (a suggestion) were accepted."""
        vim = self.vim
        last = len(vim.lines)
        if not prev:
            line_cur = vim.getline(y)
            line_prefix, line_suffix = line_cur[:x], line_cur[x:]
            lines_prefix = vim.getline(max(1, y - N_PREFIX), y - 1)
            if not line_cur.strip(" \t"):
                indent, line_prefix, line_suffix = 0, "", ""
            else:
                indent = len(leading_blanks(line_cur))
        else:
            line_cur = vim.getline(y) + prev[0] if len(prev) == 1 else prev[-1]
            line_prefix, line_suffix = line_cur, ""
            lines_prefix = vim.getline(max(1, y - N_PREFIX + len(prev) - 1), y - 1)
            if len(prev) > 1:
                lines_prefix = lines_prefix + [vim.getline(y) + prev[0], *prev[1:-1]]
            indent = self.indent_last
        lines_suffix = vim.getline(y + 1, min(last, y + N_SUFFIX))
        return Context(
            "\n".join(lines_prefix) + "\n",
            line_prefix,
            line_suffix + "\n" + "\n".join(lines_suffix) + "\n",
            indent,
            line_suffix,
        )

    def cache_get(self, key: str) -> str | None:
        if key in self.cache:
            self.cache.move_to_end(key)
        return self.cache.get(key)

    def cache_insert(self, key: str, content: str) -> None:
        if key not in self.cache and len(self.cache) > MAX_CACHE_KEYS - 1:
            self.cache.popitem(last=False)
        self.cache[key] = content
        self.cache.move_to_end(key)

    # llama#fim
    def fim(self, pos: tuple[int, int] | None, prev: list[str], record: Record) -> None:
        x, y = pos or (self.vim.col, self.vim.line)
        if self.job is not None and not self.cancel_stale:
            self._retry_later(pos, prev, record)
            return
        ctx = self.context(x, y, prev)
        if len(ctx.line_suffix) > MAX_LINE_SUFFIX:
            record.fate = "skipped"
            return
        keys, trimmed = [ctx.key()], ctx.prefix
        for _ in range(3):  # answers for the same place with the first lines scrolled away
            trimmed = re.sub(r"^[^\n]*\n", "", trimmed, count=1)
            if not trimmed:
                break
            keys.append(ctx.key(trimmed))
        if any(self.cache_get(k) is not None for k in keys):
            record.fate = "cached"
            return
        self.indent_last = ctx.indent
        self._evict_like_cursor()
        body = {
            "id_slot": 0,
            "input_prefix": ctx.prefix,
            "input_suffix": ctx.suffix,
            "input_extra": self.extra(),
            "prompt": ctx.middle,
            "n_predict": self.n_predict,
            "stop": [],
            "n_indent": ctx.indent,
            "top_k": 40,
            "top_p": 0.90,
            "samplers": ["top_k", "top_p", "infill"],
            "stream": True,
            "cache_prompt": True,
            "t_max_prompt_ms": self.t_max_prompt_ms,
            "t_max_predict_ms": T_MAX_PREDICT_MS if prev else T_FIRST_PREDICT_MS,
            "response_fields": FIM_FIELDS,
        }
        if self.job is not None and not self.job.done():  # --cancel-stale
            self.job.cancel()
            self.job_record.fate = "cancelled"
        record.keys = keys
        self._tag(record)
        self.job = self.transport.infill(body, record, lambda task: self.on_answer(task, record))
        self.job_record = record
        if abs(y - self.pos_y_pick) > PICK_DISTANCE:
            last = len(self.vim.lines)
            self.pick_chunk(self.vim.getline(max(1, y - RING_SCOPE), max(1, y - N_PREFIX)), False, False)
            self.pick_chunk(
                self.vim.getline(min(last, y + N_SUFFIX), min(last, y + N_SUFFIX + RING_CHUNK_SIZE)), False, False
            )
            self.pos_y_pick = y

    def _retry_later(self, pos, prev, record: Record) -> None:
        """A request is in flight: try again in 100 ms, replacing the retry already waiting."""
        if self.timer is not None:
            self.timer.cancel()
            if self.timer_record is not record and self.timer_record.fate == "waiting":
                self.timer_record.fate = "superseded"
        self.timer_record = record
        self.timer = asyncio.get_running_loop().call_later(RETRY_S, self._retry, pos, prev, record)

    def _retry(self, pos, prev, record: Record) -> None:
        self.timer = None
        self.fim(pos, prev, record)

    def _tag(self, record: Record) -> None:
        if record.kind in KINDS:
            record.tag = max(self.edits or [record.kind], key=KINDS.index)
            self.edits = []
        else:
            record.tag = record.kind

    def _evict_like_cursor(self) -> None:
        """Ring chunks much like a random piece of the text around the cursor leave the ring."""
        text = self.vim.around_cursor()
        l0 = self.rng.randint(0, max(0, len(text) - RING_CHUNK_SIZE // 2))
        piece = text[l0 : min(l0 + RING_CHUNK_SIZE // 2, len(text)) + 1]
        for i in range(len(self.ring) - 1, 0, -1):  # as llama.vim: the first chunk is never compared
            if chunk_sim(self.ring[i].data, piece) > 0.5:
                del self.ring[i]

    def on_answer(self, task: asyncio.Task, record: Record) -> None:
        """s:fim_on_response, then s:fim_on_exit."""
        if task.cancelled():
            return
        if record.fate == "answered":
            for key in record.keys:
                self.cache_insert(key, record.content)
            if not self.hint_shown or not self.fim_data.get("can_accept"):
                self.try_hint(self.vim.col, self.vim.line)
        record.keys = []
        if self.job is task:
            self.job = None

    def try_hint(self, x: int, y: int) -> None:
        """s:fim_try_hint: show a cached answer for the cursor (also one made a few characters
        back whose text was typed since), then ask speculatively for what follows it."""
        if self.vim.mode != "i":
            return
        ctx = self.context(x, y, [])
        raw = self.cache_get(ctx.key())
        if raw is None:
            typed, best = ctx.prefix + ctx.middle, 0
            for i in range(128):
                cached = self.cache_get(typed[: -(1 + i)] + "Î" + ctx.suffix)
                if not cached or cached[: i + 1] != typed[-(1 + i) :] or not cached[i + 1 :]:
                    continue
                if raw is None:
                    raw = cached[i + 1 :]
                elif len(cached) - i - 1 > best:
                    best, raw = len(cached) - i - 1, cached[i + 1 :]
        if raw is None:
            return
        self.render(x, y, raw)
        self.fim((x, y), self.fim_data["content"], self.new_record("speculative"))

    def render(self, x: int, y: int, raw: str) -> None:
        """s:fim_render: the suggestion as shown (the lines that repeat the file dropped)."""
        vim = self.vim
        content = raw.split("\n")
        while content and content[-1] == "":
            content.pop()
        can_accept = bool(content)
        content = content or [""]
        line_cur = vim.getline(y)
        if not line_cur.strip(" \t"):
            lead = min(len(leading_blanks(content[0])), len(line_cur))
            line_cur, content[0] = content[0][:lead], content[0][lead:]
        line_prefix, line_suffix = line_cur[:x], line_cur[x:]
        if len(content) > 1 and content[0] == "" and content[1:] == vim.getline(y + 1, y + len(content) - 1):
            content = [""]
        if len(content) == 1 and content[0] == line_suffix:
            content = [""]
        cmp_y = y + 1
        while cmp_y < len(vim.lines) and not vim.getline(cmp_y).strip(" \t"):
            cmp_y += 1
        if line_prefix + content[0] == vim.getline(cmp_y):
            following = vim.getline(cmp_y + 1)
            if len(content) == 1:
                content = [""]
            if len(content) == 2 and content[-1] == (following[: len(content[-1])] if content[-1] else following):
                content = [""]
            if len(content) > 2 and content[1:] == vim.getline(cmp_y + 1, cmp_y + len(content) - 1):
                content = [""]
        content[-1] += line_suffix
        if not "\n".join(content).strip():
            can_accept = False
        self.hint_shown = True
        self.fim_data = {"can_accept": can_accept, "content": content}

    # the ring buffer
    def pick_chunk(self, text: list[str], no_mod: bool, do_evict: bool) -> None:
        """s:pick_chunk: queue a piece of `text` (unless a buffer with changes, with no_mod)."""
        if no_mod and self.vim.name in self.vim.modified or self.ring_chunks <= 0 or len(text) < 3:
            return
        if len(text) + 1 < RING_CHUNK_SIZE:
            chunk = list(text)
        else:
            l0 = self.rng.randint(0, max(0, len(text) - RING_CHUNK_SIZE // 2))
            chunk = text[l0 : min(l0 + RING_CHUNK_SIZE // 2, len(text)) + 1]
        if any(c.data == chunk for c in self.ring + self.queued):
            return
        for pool in (self.queued, self.ring):  # chunks much like it: replaced (do_evict) or kept
            for i in range(len(pool) - 1, 0, -1):
                if chunk_sim(pool[i].data, chunk) > 0.9:
                    if not do_evict:
                        return
                    del pool[i]
        if len(self.queued) == RING_QUEUE:
            del self.queued[0]
        now = time.time()
        self.queued.append(Chunk(chunk, "\n".join(chunk) + "\n", [int(now), int(now % 1 * 1e6)], self.vim.name))

    def extra(self) -> list[dict]:
        return [{"text": c.text, "time": c.time, "filename": c.filename} for c in self.ring]

    def ring_update(self) -> None:
        """s:ring_update, every second: in normal mode or after 3 s without a move, the oldest
        queued chunk enters the ring and the server is asked to process the ring."""
        if self.vim.mode != "n" and self.clock.now() - self.t_last_move < RING_IDLE_S or not self.queued:
            return
        if len(self.ring) == self.ring_chunks:
            del self.ring[0]
        self.ring.append(self.queued.pop(0))
        body = {
            "id_slot": 0,
            "input_prefix": "",
            "input_suffix": "",
            "input_extra": self.extra(),
            "prompt": "",
            "n_predict": 0,
            "temperature": 0.0,
            "samplers": [],
            "stream": False,
            "cache_prompt": True,
            "t_max_prompt_ms": 1,
            "t_max_predict_ms": 1,
            "response_fields": [""],
        }
        self.transport.warm(body, self.new_record("ring"))

    async def settle(self, most_s: float = 600.0) -> None:
        """Wait until nothing is in flight or waiting to be sent."""
        end = self.clock.now() + most_s
        while (self.job is not None or self.timer is not None or self.transport.tasks) and self.clock.now() < end:
            await asyncio.sleep(0.05)


class Transport:
    """The requests to the server: /infill streamed, ring warm-ups as llama.vim sends them."""

    def __init__(self, client: httpx.AsyncClient, url: str, clock: Clock):
        self.client, self.url, self.clock = client, url, clock
        self.tasks: set[asyncio.Task] = set()
        self.refused = False

    def _start(self, coroutine, done=None) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if done is not None:
            task.add_done_callback(done)
        return task

    def infill(self, body: dict, record: Record, done) -> asyncio.Task:
        record.body, record.sent_s = body, self.clock.now()
        return self._start(self._stream(body, record), done)

    async def _stream(self, body: dict, record: Record) -> None:
        start, parts = time.perf_counter(), []
        try:
            async with self.client.stream("POST", self.url + "/infill", json=body) as reply:
                if reply.status_code != 200:
                    record.fate, record.error = "error", f"{reply.status_code}: {(await reply.aread()).decode()[:300]}"
                    return
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[len("data: ") :])
                    if "error" in event:
                        record.fate, record.error = "error", json.dumps(event["error"])[:300]
                        return
                    if event.get("content") and record.first_ms is None:
                        record.first_ms = 1000 * (time.perf_counter() - start)
                    if event.get("stop") is False:
                        parts.append(event.get("content", ""))
                    else:
                        record.reply = event
        except httpx.HTTPError as exc:
            record.fate, record.error = "error", f"{type(exc).__name__}: {exc}"
            return
        record.answer_ms = 1000 * (time.perf_counter() - start)
        record.first_ms = record.first_ms or record.answer_ms
        record.content, record.fate = "".join(parts), "answered"

    def warm(self, body: dict, record: Record) -> None:
        if self.refused:
            record.fate = "refused"
            return
        record.body, record.sent_s = body, self.clock.now()
        self._start(self._warm(body, record))

    async def _warm(self, body: dict, record: Record) -> None:
        start = time.perf_counter()
        try:
            reply = await self.client.post(self.url + "/infill", json=body)
        except httpx.HTTPError as exc:
            record.fate, record.error = "error", f"{type(exc).__name__}: {exc}"
            return
        record.answer_ms = record.first_ms = 1000 * (time.perf_counter() - start)
        if reply.status_code == 200:
            record.fate, record.reply = "answered", reply.json()
            return
        record.fate, record.error = "refused", f"{reply.status_code}: {reply.text[:300]}"
        if not self.refused:
            self.refused = True
            said = reply.text
            if said.startswith("{"):
                said = reply.json().get("error", {}).get("message", said)
            print(f"  server refuses n_predict 0 (ring warm-up skipped): {reply.status_code} {said[:200]}", flush=True)


# --- the session -------------------------------------------------------------------------------------


def plan_sites(lines: list[str], total: int) -> list[tuple[int, int]]:
    """(first line, count) of the stretches typed: 200 lines apart, each starting with a line of
    code under a line of code (so that `A` on the line above moves the cursor)."""
    sites, left, span = [], total, len(lines) - FIRST_SITE - 2 * N_SUFFIX
    while left > 0:
        start = FIRST_SITE + (JUMP_LINES * len(sites)) % span
        while not (lines[start - 2].strip() and lines[start - 1].strip()):
            start += 1
        sites.append((start, min(LINES_PER_SITE, left)))
        left -= sites[-1][1]
    return sites


async def edit_session(
    vim: Vim, sites: list[tuple[int, int]], original: list[str], other_lines: list[int], clock: Clock
) -> None:
    """The keystrokes, in real time (see the module docstring)."""
    vim.open()
    await clock.wait(COMMAND_S)
    for i, (start, count) in enumerate(sites):
        if i:
            await visit(vim, other_lines[i], clock)
        vim.goto(start - 1)
        await clock.wait(COMMAND_S)
        vim.append("jump")
        await clock.wait(LINE_END_S)
        vim.escape()
        await clock.wait(COMMAND_S)
        vim.move(1)
        for _ in range(count):
            await clock.wait(COMMAND_S)
            vim.delete_line()
        await clock.wait(COMMAND_S)
        vim.move(-1)
        await clock.wait(COMMAND_S)
        vim.append("delete-line")
        for text in original[start - 1 : start - 1 + count]:
            await clock.wait(LINE_END_S)
            body = text.lstrip(" \t")
            vim.enter(leading_blanks(text) if body else leading_blanks(vim.getline(vim.line)))
            for char in body:
                await clock.wait(KEY_S)
                vim.type(char)
        await clock.wait(LINE_END_S)
        vim.escape()
        assert vim.lines == original, "the typed lines do not give the file back"
        await clock.wait(COMMAND_S)
        vim.write()
        await clock.wait(COMMAND_S)


async def visit(vim: Vim, line: int, clock: Clock) -> None:
    """`:e +line textwrap.py`, a yank, back to the edited file."""
    vim.edit(OTHER, line)
    await clock.wait(VISIT_S / 2)
    vim.yank(YANK_LINES)
    await clock.wait(VISIT_S / 2)
    vim.edit(EDITED)
    await clock.wait(COMMAND_S)


async def ring_timer(plugin: LlamaVim, clock: Clock) -> None:
    tick = 1
    while True:
        await asyncio.sleep(max(0.0, tick * RING_UPDATE_S - clock.now()))
        tick += 1
        plugin.ring_update()


async def replay(url: str, args) -> tuple[list[Record], float]:
    """The session against the server at `url`: every record, and how long the typing took (s)."""
    files = {name: (STDLIB / name).read_text().split("\n") for name in (EDITED, OTHER)}
    original = list(files[EDITED])
    rng = random.Random(args.seed)
    other_lines = [rng.randint(1, len(files[OTHER]) - YANK_LINES) for _ in range(args.lines)]
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        await client.post(
            url + "/infill",
            json={"input_prefix": "def f():\n", "input_suffix": "\n", "n_predict": 2, "cache_prompt": False},
        )  # loads what the first request would
        clock = Clock()
        vim = Vim(files, EDITED)
        plugin = LlamaVim(
            vim,
            Transport(client, url, clock),
            rng,
            args.ring_chunks,
            args.t_max_prompt_ms,
            args.cancel_stale,
            args.n_predict,
        )
        vim.plugin = plugin
        ticker = asyncio.create_task(ring_timer(plugin, clock)) if args.ring_chunks > 0 else None
        await edit_session(vim, plan_sites(original, args.lines), original, other_lines, clock)
        typed_s = clock.now()
        if ticker:
            ticker.cancel()
        await plugin.settle()
        return plugin.records, typed_s


# --- the server --------------------------------------------------------------------------------------


class Server:
    """`python -m dscoder serve` in a subprocess, on 2 threads, until the `with` ends."""

    def __init__(self, model: Path, port: int, extra: list[str], log: Path):
        self.command = [sys.executable, "-m", "dscoder", "serve", "--model", str(model), "--port", str(port), *extra]
        self.url, self.log = f"http://127.0.0.1:{port}", log

    def __enter__(self) -> "Server":
        env = os.environ | {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 900
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"dscoder serve exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"dscoder serve did not answer /health in 15 minutes:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        errors = [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if line.startswith(("Traceback", "ERROR")) or " ERROR " in line
        ]
        if errors:
            print(f"  server log ({self.log}): {len(errors)} errors, the first: {errors[0][:200]}")

    def props(self) -> dict:
        return httpx.get(self.url + "/props", timeout=10).json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_setting(extra: list[str], flag: str, default: int) -> int:
    """A number given to the server in --server-arg (its default otherwise)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(flag, type=int, default=default)
    return vars(parser.parse_known_args(extra)[0])[flag.lstrip("-").replace("-", "_")]


# --- the prompts' ids and llama.cpp ----------------------------------------------------------------


@dataclass
class PromptLayer:
    """What dscoder.infer.prompts needs of an engine."""

    tokenizer: object
    context: int

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)


def prompt_ids(layer: PromptLayer, body: dict, window: int) -> list[int]:
    """The ids the server prefills for an /infill `body` (as llama_api.infill builds them)."""
    extra = [(c["filename"] or UNNAMED, c["text"]) for c in body["input_extra"]]
    prompt = prompts.insertion(
        layer,
        body["input_prefix"],
        body["input_suffix"],
        body["n_predict"],
        extra,
        path=UNNAMED if extra else None,
        typed=body["prompt"],
        window=window,
    )
    return prompt.ids


def check_ids(records: list[Record], ids: list[list[int]]) -> None:
    """Each prompt's length against the server's tokens_evaluated: equal unless the server says it
    cut the prompt (then the difference is reported)."""
    checked, kinds, differ = 0, set(), 0
    for r, i in zip(records, ids):
        if "tokens_evaluated" not in r.reply:
            continue
        if len(i) != r.reply["tokens_evaluated"]:
            if not r.reply.get("truncated"):
                raise SystemExit(
                    f"a {r.tag} prompt has {len(i)} ids here but the server evaluated "
                    f"{r.reply['tokens_evaluated']} (not truncated)"
                )
            differ += 1
        checked, kinds = checked + 1, kinds | {r.tag}
    note = f", {differ} truncated ones differ" if differ else ""
    print(
        f"  prompt ids: {checked} checked against the server's tokens_evaluated ({', '.join(sorted(kinds))}): "
        f"{checked - differ} equal{note}",
        flush=True,
    )


def replay_llama_cpp(gguf: Path, records: list[Record], ids: list[list[int]]) -> None:
    """Each prompt in order on one llama.cpp context, greedy, as many tokens as dscoder gave."""
    from llama_cpp import Llama

    counts = [max(1, r.reply.get("timings/predicted_n", 0)) for r in records]
    n_ctx = max(len(i) + n for i, n in zip(ids, counts))
    llm = Llama(
        model_path=str(gguf), n_ctx=n_ctx, n_batch=2048, n_threads=THREADS, n_threads_batch=THREADS, verbose=False
    )
    for _ in zip(range(2), llm.generate(ids[0], top_k=1, temp=0.0)):  # warm-up, then a cold cache
        pass
    llm.reset()
    for r, prompt, count in zip(records, ids, counts):
        start, first = time.perf_counter(), None
        for n, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), 1):
            first = first or time.perf_counter()
            if n >= count:
                break
        r.llama_first_ms = 1000 * (first - start)
        r.llama_answer_ms = 1000 * (time.perf_counter() - start)
    del llm


# --- the models --------------------------------------------------------------------------------------


def tokenizer_dir(work: Path) -> Path:
    folder = work / "tok"
    if not folder.is_dir():
        if not SHARED.is_file():
            raise SystemExit(f"the released vocabulary is not at {SHARED}")
        folder.mkdir(parents=True)
        tok, facts = tokenizer_lib.from_gguf(SHARED)
        tokenizer_lib.save(tok, folder, eos_token=facts["eos_token"])
    return folder


def prepare(work: Path, preset: str, dtype: str, folder: str, gguf: str) -> tuple[Path, Path]:
    """A model folder (random weights; `folder` int8 quantizes the `dtype` model) and its q8_0
    GGUF export, reused when `work` has them."""
    import torch
    from bench_generate import make_model

    from dscoder import export, quantize
    from dscoder import model as model_lib

    if (work / folder).is_dir() and (work / gguf).is_file():
        return work / folder, work / gguf
    tok_dir = tokenizer_dir(work)
    torch.set_num_threads(THREADS)
    print(f"preparing {preset} in {work} ...", flush=True)
    net, _ = make_model(work, preset, tok_dir, dtype)
    plain = work / ("bf16" if folder == "int8" else folder)
    model_lib.save(plain, net.config, tok_dir, net.cpu())
    if not (work / gguf).is_file():
        export.export(plain, work / gguf, "q8_0")
    if folder == "int8":
        quantize.quantize_model(net, 8, None)
        model_lib.save(work / folder, net.config, tok_dir, net)
    return work / folder, work / gguf


# --- the report --------------------------------------------------------------------------------------


def _p50_p95(values: list[float]) -> str:
    if not values:
        return f"{'-':>7s} {'-':>7s}"
    return f"{np.percentile(values, 50):7.0f} {np.percentile(values, 95):7.0f}"


def _ratio(theirs: list[float], ours: list[float]) -> str:
    return f"{np.median(theirs) / max(np.median(ours), 1e-9):5.2f}x" if theirs and ours else f"{'-':>6s}"


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.0f}" if values else "-"


def _row(name: str, done: list[Record], lost: int) -> str:
    ours_text, ours = [r.first_ms for r in done], [r.answer_ms for r in done]
    ours_first = [r.reply["timings/prompt_ms"] for r in done if "timings/prompt_ms" in r.reply]
    timed = [r for r in done if r.llama_answer_ms is not None]
    theirs_first, theirs = [r.llama_first_ms for r in timed], [r.llama_answer_ms for r in timed]
    prefilled = [r.reply["timings/prompt_n"] for r in done if "timings/prompt_n" in r.reply]
    cached = [r.reply["tokens_cached"] for r in done if "tokens_cached" in r.reply]
    truncated = sum(bool(r.reply.get("truncated")) for r in done)
    return (
        f"  {name:12s} {len(done):8d} {lost:7d} | {_p50_p95(ours_text)} | {_p50_p95(ours_first)} | "
        f"{_p50_p95(ours)} | {_p50_p95(theirs_first)} | {_p50_p95(theirs)} | "
        f"{_ratio(theirs_first, ours_first):>6s} {_ratio(theirs, ours):>6s} | "
        f"{_mean(prefilled):>9s} {_mean(cached):>7s} {truncated:9d}"
    )


def report(title: str, records: list[Record], session_s: float) -> None:
    answered = [r for r in records if r.fate == "answered"]
    lost = [r for r in records if r.fate in ("superseded", "cancelled", "refused", "error")]
    keystrokes = [r for r in records if r.kind in KINDS]
    print(
        f"\n{title}: {len(keystrokes)} keystrokes over {session_s:.0f} s, {len(answered)} requests answered "
        f"(ms from the request's start; dscoder's first token: the server's timings.prompt_ms, its first "
        f"text: the first streamed event with text; ratio: llama.cpp p50 / dscoder p50)"
    )
    p = f"{'p50':>7s} {'p95':>7s}"
    print(f"  {'':29s}| {'dscoder':^49s} | {'llama.cpp':^33s} | {'ratio':^13s} |")
    print(
        f"  {'kind':12s} {'answered':>8s} {'dropped':>7s} | {'first text':^15s} | {'first token':^15s} | "
        f"{'answer':^15s} | {'first token':^15s} | {'answer':^15s} | {'first':>6s} {'answer':>6s} | "
        f"{'prefilled':>9s} {'cached':>7s} {'truncated':>9s}"
    )
    print(f"  {'':29s}| {p} | {p} | {p} | {p} | {p} | {'token':>6s} {'':6s} | {'mean':>9s} {'mean':>7s} {'count':>9s}")
    for row in ROWS:
        done, dropped = [r for r in answered if r.tag == row], sum(r.kind == row for r in lost)
        if done or dropped:
            print(_row(row, done, dropped))
    print(_row("all /infill", [r for r in answered if r.kind != "ring"], sum(r.kind != "ring" for r in lost)))
    fates = collections.Counter(r.fate for r in records)
    print("  fates: " + ", ".join(f"{n} {fate}" for fate, n in sorted(fates.items())))
    sizes = [r.prompt_tokens for r in answered if r.prompt_tokens]
    if sizes:
        print(f"  prompt tokens: p50 {np.median(sizes):.0f}, max {max(sizes)}")
    for r in [r for r in records if r.fate == "error"][:3]:
        print(f"  error ({r.kind}): {r.error}")


def run_model(title: str, folder: Path, gguf: Path, args, have_llama: bool, log: Path) -> list[Record]:
    print(f"\n{title}: dscoder serve --model {folder} {' '.join(args.server_args)}", flush=True)
    with Server(folder, args.port or free_port(), args.server_args, log) as server:
        context = server.props()["default_generation_settings"]["n_ctx"]
        records, session_s = asyncio.run(replay(server.url, args))
    load = f"load {os.getloadavg()[0]:.1f} after dscoder"
    layer = PromptLayer(tokenizer_lib.load(folder), context)
    layer.tokenizer.model_max_length = context
    window = serve_setting(args.server_args, "--infill-window", ServeLimits.infill_window)
    answered = sorted((r for r in records if r.fate == "answered"), key=lambda r: r.sent_s)
    ids = [prompt_ids(layer, r.body, window) for r in answered]
    for r, i in zip(answered, ids):
        r.prompt_tokens = len(i)
    check_ids(answered, ids)
    if have_llama and answered:
        print(f"  llama.cpp: {len(answered)} prompts on {gguf.name} ...", flush=True)
        replay_llama_cpp(gguf, answered, ids)
        load += f", {os.getloadavg()[0]:.1f} after llama.cpp"
    report(f"{title}, context {context}, {load}", records, session_s)
    return records


def parse_args() -> argparse.Namespace:
    def positive(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
        return value

    def at_least_zero(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 0")
        return value

    def port(text: str) -> int:
        value = at_least_zero(text)
        if value > 65535:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a port number (0: a free one)")
        return value

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--lines", type=positive, default=8, help="lines typed (4 per site)")
    parser.add_argument(
        "--t-max-prompt-ms",
        type=at_least_zero,
        default=500,
        help="t_max_prompt_ms sent in every /infill (llama.vim's default)",
    )
    parser.add_argument(
        "--n-predict",
        type=positive,
        default=N_PREDICT,
        help="n_predict of each /infill (llama.vim's 128; random weights rarely stop before it, so "
        "a smaller one shows the latency of a keystroke rather than of 128 tokens)",
    )
    parser.add_argument(
        "--ring-chunks",
        type=at_least_zero,
        default=4,
        help="llama.vim's ring_n_chunks (its default 16; 0: no extra context)",
    )
    parser.add_argument(
        "--cancel-stale",
        action="store_true",
        help="close an unanswered request at the next keystroke (llama.vim waits for it)",
    )
    parser.add_argument("--skip-1.3b", dest="skip_big", action="store_true", help="only the tiny preset")
    parser.add_argument("--skip-llama-cpp", action="store_true", help="dscoder only")
    parser.add_argument("--work", help="keep the prepared models in this folder and reuse them")
    parser.add_argument("--port", type=port, default=0, help="the server's port (0: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="llama.vim's random chunk picks, the visited lines")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="more arguments for dscoder serve, e.g. --server-arg=--max-batch=4 (repeatable)",
    )
    parser.add_argument("--out", help="write every keystroke's and request's record here (JSON lines)")
    args = parser.parse_args()
    args.server_args = [part for text in args.server_arg for part in shlex.split(text)]
    return args


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    have_llama = False
    if not args.skip_llama_cpp:
        try:
            import llama_cpp  # noqa: F401

            have_llama = True
        except ImportError as exc:
            print(f"llama.cpp: not importable ({exc}); dscoder only")
    all_records = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        models = [("tiny (float32, random weights)", "tiny", "float32", "tiny", "tiny-q8_0.gguf")]
        if not args.skip_big:
            models.append(
                (
                    "deepseek-coder-1.3b (int8 / q8_0, random weights)",
                    "deepseek-coder-1.3b",
                    "bfloat16",
                    "int8",
                    "q8_0.gguf",
                )
            )
        for title, preset, dtype, folder, gguf in models:
            model_dir, gguf_path = prepare(work, preset, dtype, folder, gguf)
            records = run_model(title, model_dir, gguf_path, args, have_llama, work / f"{folder}-serve.log")
            all_records += [{"model": preset, **r.summary()} for r in records]
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in all_records))
        print(f"\n{len(all_records)} records written to {args.out}")


if __name__ == "__main__":
    main()
