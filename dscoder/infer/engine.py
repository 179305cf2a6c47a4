"""The generation engine: token ids in, token ids and text out.

One loop over three parts: the scheduler (scheduler.py) admits waiting sequences into free rows
of the KV cache, reusing a row that holds the start of their prompt; the model runner
(runner.py) prefills each newcomer's prompt and then advances every running sequence by one
token per decode step, over a cache allocated once and written in place; each sequence picks
its token with its own sampling parameters and seeded generator (sampling.py), and its output
processor (output.py) turns tokens into text and decides when it ends. Text deltas are handed
to a callback as they become safe to show. A sequence may name one of the engine's LoRA
adapters (lora.py): it is generated, and cache rows are reused for it, under that adapter
alone. bench/bench_generate.py compares the engine with `transformers.generate` and with
llama.cpp.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from dscoder import allocator, formats
from dscoder.errors import UserError
from dscoder.infer import lora
from dscoder.infer import runner as runner_lib
from dscoder.infer.output import OutputProcessor
from dscoder.infer.sampling import GREEDY_BELOW, SamplingParams, next_token, top_logprobs
from dscoder.infer.scheduler import Answer, Rows

if TYPE_CHECKING:
    from dscoder.infer.prompts import EditorStop

log = logging.getLogger("dscoder")
WARM_CHUNK = 32  # prompt tokens per forward of work done ahead (Engine.warm): a request waits for at most one


@dataclass
class Sequence:
    """One generation request and, once done, its result."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None  # called with each safe text delta
    on_finish: Callable[[], None] | None = None  # called once the sequence is done
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    logprobs: list[dict] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    editor: "EditorStop | None" = None  # where an editor wants an insertion to end (prompts.EditorStop)
    max_ms: float | None = None  # stop once this long has passed since the first token and a line is done
    reuse_cache: bool = True  # may start from a cached prompt's keys and values (llama.cpp's cache_prompt)
    adapter: str | None = None  # the LoRA adapter it is generated with (a name in Engine.adapters); None: the base
    stopped_by: str | None = None  # the stop sequence that ended it, if one did
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prompt cache
    first_token_at: float | None = None  # time.perf_counter() of the first token
    finished_at: float | None = None
    _emitted: int = 0

    def emit(self, end: int) -> None:
        if end > self._emitted:
            if self.on_delta is not None:
                self.on_delta(self.text[self._emitted : end])
            self._emitted = end


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, starting with BOS (once, even when the text spells it)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if ids[:1] == [bos] or bos is None else [bos, *ids]


def served_name(folder: str | Path) -> str:
    """The name a model folder is served under: its own, or its run's for a run's final model."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name == "final" else folder.name


def is_instruct(tokenizer) -> bool:
    """An instruct model's tokenizer ends turns with `<|EOT|>` (as released)."""
    return tokenizer.eos_token == formats.EOT


class Engine:
    """Generates with a causal LM and its tokenizer.

    `context` caps the tokens of one sequence (prompt and answer; default: the model's
    context, lowered where `max_rows` sequences of it would not fit in memory); `max_rows`
    sequences run together (the KV cache has that many rows); `prompt_cache=0` (or setting
    `engine.prompt_cache = None`) turns prompt reuse off; `adapters` (lora.read, checked against
    the model by lora.check) are the LoRA adapters sequences may name."""

    max_rows = 8  # sequences decoded together; the KV cache's rows

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "model",
        prompt_cache: int = 1,
        context: int | None = None,
        adapters: dict[str, lora.Adapter] | None = None,
    ):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.adapters = adapters or {}
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        model_context = int(model.config.max_position_embeddings)
        if context is not None and context > model_context:
            raise UserError(f"--context {context}: the model's context is {model_context} tokens")
        self.model_context = model_context
        self.context, self._context_given = context or model_context, context is not None
        tokenizer.model_max_length = self.context  # what the model takes (prompts are fitted to it here)
        stops = {tokenizer.eos_token_id}
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        if is_instruct(tokenizer):  # instruct models end turns with EOT and documents with EOS
            stops.add(tokenizer.convert_tokens_to_ids(formats.EOS))
        self.stop_token_ids = tuple(sorted(i for i in stops if i is not None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.lock = threading.Lock()
        self.reuse = bool(prompt_cache)
        self._runner: runner_lib.ModelRunner | None = None
        self._rows: Rows | None = None
        self.step_ms: float | None = None  # measured: one forward of a few tokens (decode step)
        self.token_ms: float | None = None  # measured: each further prompt token of a prefill

    @classmethod
    def load(
        cls,
        folder: str | Path,
        dtype: str = "auto",
        device: str = "auto",
        quantize: int | None = None,
        context: int | None = None,
        rows: int | None = None,
        adapters: dict[str, lora.Adapter] | None = None,
    ) -> "Engine":
        """An engine for a model folder (ours or a released DeepSeek-Coder download), its KV cache
        allocated for `rows` sequences (default max_rows); `quantize` (8 or 4 bits) quantizes its
        weights as it loads (quantize.py); `adapters` (lora.read) are checked against it."""
        from dscoder import model as model_lib

        folder = Path(folder)
        device = model_lib.device_for(device)
        if device.type == "cpu":
            allocator.keep_freed_memory()
        model, tokenizer = model_lib.load(
            folder, dtype=None if dtype == "auto" else dtype, device=device, quantize=quantize
        )
        lora.check(adapters or {}, model, str(folder))
        engine = cls(model, tokenizer, served_name(folder), context=context, adapters=adapters)
        if rows is not None:
            engine.max_rows = rows
        engine.prepare()  # the context is settled before any prompt is fitted to it
        return engine

    @property
    def prompt_cache(self) -> Rows | None:
        """The rows and the prompts they hold for reuse (None: reuse is off)."""
        return self._rows if self.reuse else None

    @prompt_cache.setter
    def prompt_cache(self, value) -> None:
        self.reuse = value not in (None, False, 0)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """How many tokens an answer may have: what was asked, within the context."""
        return max(0, min(max_new_tokens, self.context - prompt_tokens))

    def prefill_ms(self, ids: list[int], adapter: str | None = None) -> float | None:
        """Expected milliseconds to the first token of the prompt `ids` under `adapter`, given what
        the cache rows hold now and the measured speeds; None before anything was measured."""
        if self.step_ms is None or self.token_ms is None:
            return None
        new = len(ids) - min(self._rows.shared(ids, adapter) if self.reuse and self._rows else 0, len(ids) - 1)
        return self.step_ms + self.token_ms * (new - 1)

    def _measured(self, tokens: int, seconds: float) -> None:
        """Keep the speeds up to date with a prefill of `tokens` that took `seconds`."""
        ms = 1000 * seconds
        if tokens <= 2:
            self.step_ms = ms if self.step_ms is None else 0.8 * self.step_ms + 0.2 * ms
        elif tokens >= 32 and self.step_ms is not None:
            rate = max(ms - self.step_ms, 0.0) / (tokens - 1)
            self.token_ms = rate if self.token_ms is None else 0.7 * self.token_ms + 0.3 * rate

    @torch.inference_mode()
    def calibrate(self) -> None:
        """Measure the prefill speeds (prefill_ms) once, on a row that then holds nothing."""
        with self.lock:
            self.prepare()
            row, _, _ = self._rows.take([], reuse=False)
            try:
                ids = [self.pad_id] * 64
                for count in (1, 1, len(ids)):
                    began = time.perf_counter()
                    self._runner.prefill(row, ids[:count], 0)
                    self._measured(count, time.perf_counter() - began)
            finally:
                self._rows.release(row)

    @torch.inference_mode()
    def warm(self, ids: list[int], stop: Callable[[], bool], guess: int = 1, adapter: str | None = None) -> int:
        """Compute the keys and values of a likely next prompt `ids` (under `adapter`) ahead of
        its request, in a row of its own (a row's other tokens are kept: see scheduler.Rows.take's
        fork), a few tokens at a time until done or `stop()`; returns how many of its tokens the
        cache holds. `guess` numbers the guesses (rows an earlier guess filled are continued in place)."""
        if not self.reuse or len(ids) >= self.context:
            return 0
        with self.lock:
            self.prepare()
            if self._rows.shared(ids, adapter) == len(ids):  # already held (by a request's row or a later guess)
                return len(ids)
            if not self._rows.free_count():
                return 0
            row, cached, source = self._rows.take(ids, True, left=0, fork=guess, adapter=adapter)
            done = 0
            try:
                if source is not None and not self._runner.copy(source, row, cached, stop=stop):
                    cached = 0  # stopped while copying: the row holds nothing whole
                elif cached < len(ids):
                    _, done = self._runner.prefill(
                        row, ids[cached:], cached, stop=stop, chunk=WARM_CHUNK, adapter=adapter
                    )
            finally:
                self._rows.hold(row, ids[: cached + done], guessed=guess)
                self._rows.release(row)
            return cached + done

    def prepare(self) -> None:
        """Allocate the KV cache for `max_rows` sequences of `context` tokens (done by the first
        generation otherwise): a UserError with the numbers when it cannot fit; a context left
        to its default is lowered to fit instead, and the change logged."""
        if self._runner is not None and self._runner.cache.rows == self.max_rows:
            return
        self._runner = None
        rows = self.max_rows
        if not self._context_given:  # the model's context, or what `rows` sequences of it fit in
            free = runner_lib.free_bytes(self.device)
            fits = (
                self.model_context
                if free is None
                else int(0.75 * free) // (rows * runner_lib.bytes_per_token(self.model.config, self.dtype)) // 256 * 256
            )
            self.context = min(self.model_context, max(256, fits))
            self.tokenizer.model_max_length = self.context
            if self.context < self.model_context:
                log.warning(
                    "context lowered to %d tokens so that %d sequences' keys and values fit in memory "
                    "(--context sets it)",
                    self.context,
                    rows,
                )
        runner_lib.check_fits(self.model.config, self.dtype, rows, self.context, self.device)
        cache = runner_lib.KVCache(self.model.config, rows, self.context, self.dtype, self.device)
        self._runner, self._rows = runner_lib.ModelRunner(self.model, cache, self.adapters), Rows(rows)

    def _check(self, sequences: list[Sequence]) -> None:
        for s in sequences:
            if not s.prompt_ids:
                raise UserError("empty prompt")
            if len(s.prompt_ids) >= self.context:
                raise UserError(f"the prompt has {len(s.prompt_ids)} tokens; the model's context is {self.context}")
            if s.adapter is not None and s.adapter not in self.adapters:
                raise UserError(f"no LoRA adapter {s.adapter!r} (this engine has {', '.join(self.adapters) or 'none'})")

    @torch.inference_mode()
    def generate(
        self, sequences: list[Sequence], admit: Callable[[int], list[Sequence]] | None = None
    ) -> list[Sequence]:
        """Run every sequence to its end; results are written into the sequences.

        At most `max_rows` run at once; the others wait for a free row. With `admit`, new
        sequences join between decode steps (continuous batching): `admit(free_rows)` returns
        up to that many waiting sequences."""
        self._check(sequences)
        with self.lock:
            self.prepare()
            waiting, running = deque(sequences), []
            try:
                while waiting or running:
                    while waiting and self._rows.free_count():
                        self._start(waiting.popleft(), running)
                    if admit is not None:
                        free = self.max_rows - len(running) - len(waiting)
                        newcomers = admit(free) if free > 0 else []
                        self._check(newcomers)
                        waiting.extend(newcomers)
                        sequences = sequences + newcomers
                    if running:
                        logits = self._runner.decode(
                            [r.row for r in running],
                            [r.last for r in running],
                            [r.position for r in running],
                            [r.s.adapter for r in running],
                        )
                        running = [r for i, r in enumerate(running) if self._advance(r, logits[i])]
            finally:
                for r in running:
                    self._rows.release(r.row)
        return sequences

    def _start(self, s: Sequence, running: list) -> None:
        """Prefill a sequence in a free row and take its first token (or, where a row's last
        answer continues its prompt, that answer's next tokens)."""
        if self._known(s, running):
            return
        row, cached, _ = self._rows.take(s.prompt_ids, self.reuse and s.reuse_cache, adapter=s.adapter)
        try:
            began = time.perf_counter()
            logits, done = self._runner.prefill(
                row, s.prompt_ids[cached:], cached, stop=s.cancelled.is_set, adapter=s.adapter
            )
            if logits is not None:
                self._measured(done, time.perf_counter() - began)
        except BaseException:
            self._rows.release(row)
            raise
        self._rows.hold(row, s.prompt_ids[: cached + done])
        s.cached_tokens = cached
        live = _Live(s, row, len(s.prompt_ids), self)
        if logits is None:  # cancelled while its prompt was computed: what was computed is kept
            self._rows.release(row)
            live.output.end("cancelled")
        elif self._advance(live, logits):
            running.append(live)

    def _known(self, s: Sequence, running: list) -> bool:
        """Start a greedy sequence from a row whose last answer continues its prompt: the answer's
        next tokens are what greedy decoding gives after these same tokens, so they are taken as
        chosen; the row goes on decoding if the sequence wants more. False where no row has it."""
        if not (self.reuse and s.reuse_cache and s.params.temperature < GREEDY_BELOW and s.params.logprobs is None):
            return False
        found = self._rows.known(s.prompt_ids, s.adapter)
        if found is None:
            return False
        row, tokens = found
        answer = self._rows.answers[row]
        self._rows.claim(row)
        s.cached_tokens = len(s.prompt_ids)
        live = _Live(s, row, len(s.prompt_ids), self)
        for token in tokens:
            live.chosen.append(token)
            if live.output.push(token):  # done within the known answer: the row is unchanged
                self._rows.release(row)
                return True
        live.last, live.position = tokens[-1], len(answer.prompt) + len(answer.tokens) - 1
        running.append(live)
        return True

    def _advance(self, live: "_Live", logits: torch.Tensor) -> bool:
        """Choose the live sequence's next token from `logits` (V,); False once it has ended
        (its row then holds its prompt and answer, and is free)."""
        live.last = live.choose(logits)
        live.chosen.append(live.last)
        live.position += 1
        if live.output.push(live.last):
            prompt, params = tuple(live.s.prompt_ids), live.s.params
            greedy = params.temperature < GREEDY_BELOW
            self._rows.hold(
                live.row, prompt + tuple(live.chosen[:-1]), Answer(prompt, tuple(live.chosen)) if greedy else None
            )
            self._rows.release(live.row)
            return False
        return True


class _Live:
    """A running sequence: its row, its position, how it chooses tokens and its output."""

    def __init__(self, sequence: Sequence, row: int, position: int, engine: Engine):
        self.s, self.row, self.position, self.last = sequence, row, position - 1, 0
        self.chosen: list[int] = []  # every token chosen, stop tokens included
        params = sequence.params
        limit = engine.budget(len(sequence.prompt_ids), params.max_new_tokens)
        self.output = OutputProcessor(sequence, engine.tokenizer, engine.stop_token_ids, limit)
        self.convert = engine.tokenizer.convert_ids_to_tokens
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=engine.device)
            self.generator.manual_seed(
                params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            )

    def choose(self, logits: torch.Tensor) -> int:
        params = self.s.params
        token = next_token(logits, params, self.generator)
        if params.logprobs is not None:
            chosen, top = top_logprobs(logits, token, params.logprobs)
            self.s.logprobs.append(
                {"token_id": token, "logprob": chosen, "top": [(self.convert(i), v) for i, v in top]}
            )
        return token
