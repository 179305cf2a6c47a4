"""The generation engine: token ids in, token ids and text out.

Batched prefill of left-padded prompts, then one decode step per token with a KV cache; each
sequence samples with its own parameters and seeded generator, stops at its stop tokens (EOS
for base models, `<|EOT|>` for instruct ones), at its stop sequences (trimmed, found across
token boundaries) or at its token limit, and leaves the batch when done. Text deltas are
handed to a callback as they become safe to show (whole UTF-8 characters, no partial stop
sequence). Our own loop on transformers' model forward; bench/bench_generate.py compares it with
`transformers.generate`.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dscoder import allocator, formats
from dscoder.errors import UserError
from dscoder.infer.sampling import (
    IncrementalDecoder,
    SamplingParams,
    find_stop,
    held_back,
    next_token,
    top_logprobs,
)

log = logging.getLogger("dscoder")


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
    stopped_by: str | None = None  # the stop sequence that ended it, if one did
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prompt cache
    first_token_at: float | None = None  # time.perf_counter() of the first token
    finished_at: float | None = None
    _emitted: int = 0

    def emit(self, end: int) -> None:
        if end > self._emitted:
            if self.on_delta is not None:
                self.on_delta(self.text[self._emitted:end])
            self._emitted = end


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, starting with BOS (once, even when the text spells it)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if ids[:1] == [bos] or bos is None else [bos, *ids]


def is_instruct(tokenizer) -> bool:
    """An instruct model's tokenizer ends turns with `<|EOT|>` (as released)."""
    return tokenizer.eos_token == formats.EOT


class Engine:
    """Generates with a causal LM and its tokenizer (one batch at a time)."""

    def __init__(self, model, tokenizer, name: str = "model", prompt_cache: int = 4):
        from dscoder.infer.prompt_cache import PromptCache

        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.prompt_cache = PromptCache(prompt_cache) if prompt_cache else None  # prompts kept for reuse
        self.device = next(model.parameters()).device
        self.context = int(model.config.max_position_embeddings)
        tokenizer.model_max_length = self.context  # what the model takes (prompts are fitted to it here)
        stops = {tokenizer.eos_token_id}
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        if is_instruct(tokenizer):  # instruct models end turns with EOT and documents with EOS
            stops.add(tokenizer.convert_tokens_to_ids(formats.EOS))
        self.stop_token_ids = tuple(sorted(i for i in stops if i is not None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.lock = threading.Lock()
        self.can_merge = hasattr(_new_cache(model.config), "layers")

    @classmethod
    def load(cls, folder: str | Path, dtype: str = "auto", device: str = "auto", quantize: int | None = None) -> "Engine":
        """An engine for a model folder (ours or a released DeepSeek-Coder download); `quantize`
        (8 or 4 bits) quantizes its weights as it loads (quantize.py)."""
        from dscoder import model as model_lib

        folder = Path(folder)
        device = model_lib.device_for(device)
        if device.type == "cpu":
            allocator.keep_freed_memory()
        model, tokenizer = model_lib.load(folder, dtype=None if dtype == "auto" else dtype, device=device,
                                          quantize=quantize)
        name = folder.resolve().name
        if name == "final":  # a run's final model: name it after the run
            name = folder.resolve().parent.name
        return cls(model, tokenizer, name)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def _forward(self, **kwargs):
        cache = kwargs.pop("cache")
        return self.model(**kwargs, **{self._cache_arg: cache}, use_cache=True)

    def _check(self, sequences: list[Sequence]) -> None:
        for s in sequences:
            if not s.prompt_ids:
                raise UserError("empty prompt")
            if len(s.prompt_ids) >= self.context:
                raise UserError(f"the prompt has {len(s.prompt_ids)} tokens; the model's context is {self.context}")

    def _prefill(self, sequences: list[Sequence]):
        """(cache, attention mask, last positions, last logits) for the prompts: one left-padded
        batch, or, when some prompt starts like a cached one, one prompt at a time from the
        cached keys and values, merged. Every prompt is then cached for the next."""
        hits = [self.prompt_cache.lookup(s.prompt_ids) if self.prompt_cache is not None and s.reuse_cache else None
                for s in sequences]
        if all(hit is None for hit in hits):
            result = self._prefill_batch(sequences)
        else:
            result = None
            for s, hit in zip(sequences, hits):
                part = self._prefill_batch([s]) if hit is None else self._prefill_cached(s, *hit)
                if result is None:
                    result = part
                else:
                    cache, mask, positions, logits = result
                    mask = _merge(cache, part[0], mask, part[1])
                    result = cache, mask, torch.cat([positions, part[2]]), torch.cat([logits, part[3]])
        if self.prompt_cache is not None:
            cache, mask = result[0], result[1]
            for row, s in enumerate(sequences):
                n = len(s.prompt_ids)
                self.prompt_cache.store(s.prompt_ids, [(layer.keys[row:row + 1, :, -n:], layer.values[row:row + 1, :, -n:])
                                                       for layer in cache.layers])
        return result

    def _prefill_cached(self, s: Sequence, cached: int, layers: list):
        """One prompt whose first `cached` tokens' keys and values are known."""
        cache = _new_cache(self.model.config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        n = len(s.prompt_ids)
        ids = torch.tensor([s.prompt_ids[cached:]], device=self.device)
        mask = torch.ones((1, n), dtype=torch.long, device=self.device)
        positions = torch.arange(cached, n, device=self.device).unsqueeze(0)
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                               logits_to_keep=1).logits[:, -1]
        s.cached_tokens = cached
        return cache, mask, positions[:, -1:], logits

    def _prefill_batch(self, sequences: list[Sequence]):
        """Left-padded batch prefill."""
        width = max(len(s.prompt_ids) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, s in enumerate(sequences):
            ids[row, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[row, width - len(s.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.model.config)
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                               logits_to_keep=1).logits[:, -1]
        return cache, mask, positions[:, -1:], logits

    @torch.inference_mode()
    def generate(self, sequences: list[Sequence], admit: Callable[[int], list[Sequence]] | None = None) -> list[Sequence]:
        """Run every sequence to its end; results are written into the sequences.

        With `admit`, new sequences join between decode steps (continuous batching):
        `admit(free_rows)` returns up to that many waiting sequences; they are prefilled and
        their KV cache merged into the running batch."""
        self._check(sequences)
        with self.lock:
            cache, mask, positions, logits = self._prefill(sequences)
            states = [_State(s, self) for s in sequences]
            while states:
                tokens = [state.step(logits[row]) for row, state in enumerate(states)]
                still = [row for row, state in enumerate(states) if state.s.finish_reason is None]
                newcomers = admit(self.max_rows - len(still)) if admit is not None and self.can_merge else []
                if still:
                    if len(still) < len(states):
                        keep = torch.tensor(still, device=self.device)
                        cache.batch_select_indices(keep)
                        mask, positions = _trim(cache, mask[keep]), positions[keep]
                    states = [states[r] for r in still]
                    mask = torch.cat([mask, mask.new_ones((len(states), 1))], dim=1)
                    positions = positions + 1
                    step_ids = torch.tensor([tokens[r] for r in still], device=self.device).unsqueeze(1)
                    logits = self._forward(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                           cache=cache).logits[:, -1]
                else:
                    states = []
                if newcomers:
                    self._check(newcomers)
                    new_cache, new_mask, new_positions, new_logits = self._prefill(newcomers)
                    if states:
                        mask = _merge(cache, new_cache, mask, new_mask)
                        positions = torch.cat([positions, new_positions])
                        logits = torch.cat([logits, new_logits])
                    else:
                        cache, mask, positions, logits = new_cache, new_mask, new_positions, new_logits
                    states += [_State(s, self) for s in newcomers]
                    sequences = sequences + newcomers
        return sequences

    max_rows = 8  # most sequences decoded together when admitting newcomers


def _new_cache(config):
    from transformers import DynamicCache

    return DynamicCache(config=config)


def _trim(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading time steps that no remaining row uses (they were the rows that finished):
    with sequences joining and leaving all the time, the cache would otherwise grow with the
    server's uptime. Returns the trimmed mask. (B, T) -> (B, T')."""
    first = int(torch.argmax(mask.any(dim=0).to(torch.int8)))  # the first step some row uses
    if first == 0:
        return mask
    for layer in cache.layers:
        layer.keys = layer.keys[..., first:, :]
        layer.values = layer.values[..., first:, :]
    return mask[:, first:]


def _merge(cache, new_cache, mask: torch.Tensor, new_mask: torch.Tensor) -> torch.Tensor:
    """Append `new_cache`'s rows to `cache`, left-padding the shorter along time; returns the
    merged attention mask (pads are masked out)."""
    width = max(mask.shape[1], new_mask.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layer, new_layer in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([pad(layer.keys, -2), pad(new_layer.keys, -2)])
        layer.values = torch.cat([pad(layer.values, -2), pad(new_layer.values, -2)])
    return torch.cat([pad(mask, 1), pad(new_mask, 1)])


class _State:
    """The per-sequence part of a decode step: sampling, text, stops."""

    def __init__(self, sequence: Sequence, engine: Engine):
        self.s, self.engine = sequence, engine
        params = sequence.params
        self.limit = min(params.max_new_tokens, engine.context - len(sequence.prompt_ids))
        self.stop_ids = set(params.stop_token_ids or engine.stop_token_ids)
        self.decoder = IncrementalDecoder(engine.tokenizer)
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=engine.device)
            self.generator.manual_seed(params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)

    def step(self, logits: torch.Tensor) -> int:
        """Choose the next token from `logits` (V,), update text and finish state."""
        s, params = self.s, self.s.params
        token = next_token(logits, params, self.generator)
        if s.first_token_at is None:
            s.first_token_at = time.perf_counter()
        if params.logprobs is not None:
            chosen, top = top_logprobs(logits, token, params.logprobs)
            convert = self.engine.tokenizer.convert_ids_to_tokens
            s.logprobs.append({"token_id": token, "logprob": chosen, "top": [(convert(i), v) for i, v in top]})
        if token in self.stop_ids:
            self._finish("stop")
            return token
        s.token_ids.append(token)
        before = len(s.text)
        s.text += self.decoder.push(token)
        if params.stop:
            cut = find_stop(s.text, params.stop, before)
            if cut is not None:
                s.stopped_by = next((w for w in params.stop if s.text.startswith(w, cut)), None)
                s.text = s.text[:cut]
                self._done("stop")
                return token
        if s.editor is not None:
            cut = s.editor.cut(s.text)
            if cut is not None:
                s.text = s.text[:cut]
                self._done("stop")
                return token
        timed_out = s.max_ms is not None and "\n" in s.text and \
            1000 * (time.perf_counter() - s.first_token_at) >= s.max_ms
        if len(s.token_ids) >= self.limit or s.cancelled.is_set() or timed_out:
            self._finish("cancelled" if s.cancelled.is_set() else "length")
            return token
        safe = len(s.text) - held_back(s.text, params.stop)
        if s.editor is not None:  # whole lines only (a rule may still cut at any later line start),
            # and no trailing blank text, which the end of an insertion strips
            safe = min(safe, max(min(s.text.rfind("\n"), len(s.text.rstrip())), s._emitted))
        s.emit(safe)
        return token

    def _finish(self, reason: str) -> None:
        s = self.s
        s.text += self.decoder.flush()
        if s.params.stop:
            cut = find_stop(s.text, s.params.stop)
            if cut is not None:
                s.stopped_by = next((w for w in s.params.stop if s.text.startswith(w, cut)), None)
                s.text, reason = s.text[:cut], "stop"
        self._done(reason)

    def _done(self, reason: str) -> None:
        s = self.s
        if s.editor is not None:
            s.text = s.editor.final(s.text)
        s.emit(len(s.text))
        s.finish_reason = reason
        s.finished_at = time.perf_counter()
        if s.on_finish is not None:
            s.on_finish()
