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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dscoder import formats
from dscoder.errors import UserError
from dscoder.infer.sampling import IncrementalDecoder, SamplingParams, find_stop, held_back, next_token, top_logprobs

log = logging.getLogger("dscoder")


@dataclass
class Sequence:
    """One generation request and, once done, its result."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None  # called with each safe text delta
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    logprobs: list[dict] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    _emitted: int = 0

    def emit(self, end: int) -> None:
        if end > self._emitted:
            if self.on_delta is not None:
                self.on_delta(self.text[self._emitted:end])
            self._emitted = end


def is_instruct(tokenizer) -> bool:
    """An instruct model's tokenizer ends turns with `<|EOT|>` (as released)."""
    return tokenizer.eos_token == formats.EOT


class Engine:
    """Generates with a causal LM and its tokenizer (one batch at a time)."""

    def __init__(self, model, tokenizer, name: str = "model"):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        self.context = int(model.config.max_position_embeddings)
        stops = {tokenizer.eos_token_id}
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        if is_instruct(tokenizer):  # instruct models end turns with EOT and documents with EOS
            stops.add(tokenizer.convert_tokens_to_ids(formats.EOS))
        self.stop_token_ids = tuple(sorted(i for i in stops if i is not None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path, dtype: str = "auto", device: str = "auto") -> "Engine":
        """An engine for a model folder (ours or a released DeepSeek-Coder download)."""
        from dscoder import model as model_lib

        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"model folder not found: {folder}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer = model_lib.load(folder, dtype=None if dtype == "auto" else dtype, device=device)
        return cls(model, tokenizer, folder.resolve().name)

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, starting with BOS (once, even when the text spells it)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ids if ids[:1] == [bos] or bos is None else [bos, *ids]

    def _forward(self, **kwargs):
        cache = kwargs.pop("cache")
        return self.model(**kwargs, **{self._cache_arg: cache}, use_cache=True)

    @torch.inference_mode()
    def generate(self, sequences: list[Sequence]) -> list[Sequence]:
        """Run every sequence to its end; results are written into the sequences."""
        from transformers import DynamicCache

        for s in sequences:
            if not s.prompt_ids:
                raise UserError("empty prompt")
            if len(s.prompt_ids) >= self.context:
                raise UserError(f"the prompt has {len(s.prompt_ids)} tokens; the model's context is {self.context}")
        with self.lock:
            width = max(len(s.prompt_ids) for s in sequences)
            ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(sequences), width), dtype=torch.long)
            for row, s in enumerate(sequences):
                ids[row, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
                mask[row, width - len(s.prompt_ids):] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                   logits_to_keep=1).logits[:, -1]
            states = [_State(s, self) for s in sequences]
            active = list(range(len(sequences)))
            while True:
                tokens = []
                for row, index in enumerate(active):
                    tokens.append(states[index].step(logits[row]))
                still = [r for r, index in enumerate(active) if sequences[index].finish_reason is None]
                if not still:
                    break
                if len(still) < len(active):
                    keep = torch.tensor(still, device=self.device)
                    cache.batch_select_indices(keep)
                    mask, positions = mask[keep], positions[keep]
                    tokens = [tokens[r] for r in still]
                    active = [active[r] for r in still]
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                positions = positions[:, -1:] + 1
                step_ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
                logits = self._forward(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                       cache=cache).logits[:, -1]
        return sequences


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
                s.text = s.text[:cut]
                s.emit(cut)
                s.finish_reason = "stop"
                return token
        if len(s.token_ids) >= self.limit or s.cancelled.is_set():
            self._finish("length" if not s.cancelled.is_set() else "cancelled")
            return token
        s.emit(len(s.text) - held_back(s.text, params.stop))
        return token

    def _finish(self, reason: str) -> None:
        s = self.s
        s.text += self.decoder.flush()
        if s.params.stop:
            cut = find_stop(s.text, s.params.stop)
            if cut is not None:
                s.text, reason = s.text[:cut], "stop"
        s.emit(len(s.text))
        s.finish_reason = reason
