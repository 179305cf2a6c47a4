"""Prompt caching: the keys and values of recent prompts, reused by the next prompt that starts
the same way.

An editor sends the whole file on every keystroke, so successive prompts share all but their
last few tokens. The engine looks up the cached prompt with the longest common token prefix,
starts from its keys and values for that prefix and computes only the rest (`tokens_cached`
in llama.cpp's responses). A few prompts are kept, least recently used first out; entries are
copies, so the running batch never changes them, and the engine's lock serialises access.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

MIN_REUSE = 16  # shorter common prefixes are recomputed: a separate prefill would cost more


class PromptCache:
    def __init__(self, entries: int = 4):
        self.entries = entries
        self._store: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """(n, per-layer (keys, values) of the first n tokens) for the cached prompt sharing the
        longest prefix with `ids`; at least one token is always left to compute. None when no
        entry shares MIN_REUSE tokens."""
        best, best_key = 0, None
        for key in self._store:
            shared = len(os.path.commonprefix([key, tuple(ids)]))
            if shared > best:
                best, best_key = shared, key
        best = min(best, len(ids) - 1)
        if best_key is None or best < MIN_REUSE:
            return None
        self._store.move_to_end(best_key)
        return best, [(k[..., :best, :], v[..., :best, :]) for k, v in self._store[best_key]]

    def store(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the keys and values (1, heads, len(ids), head_dim) of one prompt."""
        if len(ids) < MIN_REUSE:
            return
        key = tuple(ids)
        self._store[key] = [(k.clone(), v.clone()) for k, v in layers]
        self._store.move_to_end(key)
        while len(self._store) > self.entries:
            self._store.popitem(last=False)
