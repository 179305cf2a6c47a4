"""`dscoder serve --upstream URL`: dscoder in front of another OpenAI-compatible engine (vLLM,
llama.cpp's server, llama-cpp-python's server, another `dscoder serve`).

The front builds every prompt itself with the model's own tokenizer, through the one prompt layer
(FIM from `suffix`, `/infill` with repository context, the chat template, fitting), and forwards
each as a plain `prompt` completion: the upstream server only continues text. vLLM's server,
for one, refuses `suffix`; and a prompt rendered by hand is where FIM tokens, BOS and stop tokens
go wrong. The prompt is sent as text without BOS (the upstream adds its own BOS, as vLLM and
llama.cpp do for completions).

`UpstreamEngine` stands where the server's `Engine` stands (tokenizer, context, name, `encode`,
`budget`), says what differs (`make_batcher`, `gives_logprobs`), and takes its context from the
upstream when the upstream says it (vLLM's `max_model_len`, llama.cpp's `n_ctx`), so a prompt too
long for it is refused here as the local server refuses one. `UpstreamBatcher` stands where the
`Batcher` stands: the upstream batches; this side streams each sequence, applies the editor's
stopping rules to the text as it comes, and ends a stream whose client went away. Upstream errors
become 502 (504 for time-outs) errors; the front keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from dscoder import formats
from dscoder.errors import UserError
from dscoder.infer.batching import Closing, Slots, stream
from dscoder.infer.engine import Sequence, encode_prompt, is_instruct
from dscoder.infer.remote import Endpoint

log = logging.getLogger("dscoder")


def _context(folder: Path, tokenizer, given: int | None) -> int:
    """The context given, else the tokenizer folder's: config.json's max_position_embeddings, or
    the tokenizer's model_max_length."""
    if given:
        return given
    config = folder / "config.json"
    if config.is_file():
        try:
            context = int(json.loads(config.read_text())["max_position_embeddings"])
            log.info("context: %d tokens, from %s (max_position_embeddings)", context, config)
            return context
        except (OSError, ValueError, KeyError, TypeError):
            pass
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 10**7:
        log.info("context: %d tokens, from the tokenizer in %s (model_max_length)", length, folder)
        return length
    raise UserError(
        f"--tokenizer {folder}: no config.json with max_position_embeddings and no model_max_length; "
        "give the upstream model's context with --context"
    )


class UpstreamEngine:
    """The model behind an OpenAI-compatible server, as the server sees an Engine: its
    tokenizer (read from a tokenizer or model folder), context length and name."""

    gives_logprobs = False  # token log-probabilities are not forwarded

    def __init__(self, endpoint: Endpoint, tokenizer_dir: str | Path, context: int | None = None):
        from dscoder import tokenizer as tokenizer_lib

        folder = Path(tokenizer_dir)
        if not folder.is_dir():
            raise UserError(f"--tokenizer {folder}: not a folder (a tokenizer or model folder)")
        self.endpoint, self.tokenizer = endpoint, tokenizer_lib.load(folder)
        self.context = _context(folder, self.tokenizer, context)
        self.tokenizer.model_max_length = self.context
        self.name = endpoint.model or folder.resolve().name
        self.max_rows = 0
        self.prompt_cache = None
        self.adapters: dict = {}  # the upstream serves its own (vLLM's --lora-modules), not through this front
        self.instruct = is_instruct(self.tokenizer)

    @classmethod
    def connect(
        cls, url: str, api_key: str | None, model: str | None, tokenizer_dir: str | Path, context: int | None = None
    ) -> "UpstreamEngine":
        """The server at `url` as an engine, once it answers: its model (the one named, or its
        only one) and, unless `context` is given, the context the server says it has (else the
        tokenizer folder's)."""

        async def ask() -> tuple[str, tuple[int, str] | None]:
            probe = Endpoint(url, api_key, model)  # its connections belong to this event loop only
            try:
                name = await probe.resolve_model()
                return name, None if context else await probe.context_length()
            finally:
                await probe.close()

        name, said = asyncio.run(ask())
        if context:
            log.info("context: %d tokens (--context)", context)
        elif said is not None:
            context = said[0]
            log.info("context: %d tokens, from the upstream's %s", *said)
        return cls(Endpoint(url, api_key, name), tokenizer_dir, context)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """How many tokens an answer may have: what was asked, within the context (as Engine.budget)."""
        return max(0, min(max_new_tokens, self.context - prompt_tokens))

    def make_batcher(self, max_batch: int) -> "UpstreamBatcher":
        """What generates for the server: the upstream, up to `max_batch` sequences at once."""
        return UpstreamBatcher(self, max_batch)

    def text_of(self, ids: list[int]) -> str:
        """A prompt's text as the upstream is sent it: without BOS, special tokens spelled out."""
        if ids[:1] == [self.tokenizer.bos_token_id]:
            ids = ids[1:]
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class UpstreamBatcher:
    """The Batcher's interface (run, stream, close) over an upstream server; at most
    `max_batch` sequences in flight at once."""

    def __init__(self, engine: UpstreamEngine, max_batch: int = 8):
        self.engine, self.closing = engine, False
        engine.max_rows = max_batch
        self.gate = asyncio.Semaphore(max_batch)
        self.live: dict[int, Sequence] = {}  # sequences waiting or streaming, by id
        self.slots = Slots()

    def stop(self) -> None:
        """Take no more sequences and end every live one at its next delta (as Batcher.stop)."""
        self.closing = True
        for s in list(self.live.values()):
            s.cancelled.set()

    def close(self) -> None:
        self.stop()

    async def run(self, sequences: list[Sequence], slot=None) -> None:
        if self.closing:
            raise Closing("the server is shutting down")
        self.slots.enter(slot, sequences)
        self.live.update((id(s), s) for s in sequences)
        try:
            await asyncio.gather(*(self._one(s) for s in sequences))
        finally:
            self.slots.leave(slot, sequences)
            for s in sequences:
                self.live.pop(id(s), None)

    def stream(self, sequences: list[Sequence], slot=None):
        return stream(lambda sequences: self.run(sequences, slot), sequences)

    def ahead(self, key, prompts: list[list[int]], adapter: str | None = None) -> None:
        """Nothing: what the upstream caches is its own business."""

    async def _one(self, s: Sequence) -> None:
        engine, p = self.engine, s.params
        stops = tuple(p.stop) + ((formats.EOT,) if engine.instruct else ())  # spelled out by some servers
        async with self.gate:
            async for delta, finish in engine.endpoint.stream(
                engine.text_of(s.prompt_ids), p.max_new_tokens, p.temperature, p.top_p, p.seed, stops
            ):
                if delta:
                    s.first_token_at = s.first_token_at or time.perf_counter()
                    s.text += delta
                    cut = s.editor.cut(s.text) if s.editor is not None else None
                    if cut is not None:
                        s.text, s.finish_reason = s.text[:cut], "stop"
                        break
                    s.emit(len(s.text) if s.editor is None else s.editor.streamable(s.text))
                if finish:
                    s.finish_reason = "length" if finish == "length" else "stop"
                if s.cancelled.is_set() or (
                    s.max_ms
                    and s.first_token_at
                    and 1000 * (time.perf_counter() - s.first_token_at) > s.max_ms
                    and s.text.endswith("\n")
                ):
                    s.finish_reason = s.finish_reason or "length"
                    break
            if s.editor is not None:
                s.text = s.editor.final(s.text)
            s.emit(len(s.text))
            s.token_ids = engine.tokenizer(s.text, add_special_tokens=False)["input_ids"] if s.text else []
            s.finish_reason = s.finish_reason or ("length" if len(s.token_ids) >= p.max_new_tokens else "stop")
            s.finished_at = time.perf_counter()
