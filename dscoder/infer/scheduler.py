"""The scheduler: which sequences run, and in which row of the KV cache.

Sequences wait in arrival order and start as rows free up (continuous batching: a sequence
joins the running ones between two decode steps and leaves as soon as it ends). Each row keeps
the prompt whose keys and values it holds after its sequence ended; a new sequence goes to the
free row whose prompt shares the longest start with its own and computes only the rest
(llama.cpp's `cache_prompt`, `tokens_cached` in its answers): an editor sends the whole file on
every keystroke, so successive prompts share all but their last few tokens. Nothing is copied:
the row is simply continued. Otherwise the least recently used free row is taken.
"""

from __future__ import annotations

import os

MIN_REUSE = 16  # shorter common starts are recomputed: not worth losing a row's other prompt for


class Rows:
    """The cache rows: which prompt each holds and which are in use."""

    def __init__(self, count: int):
        self.held: list[tuple[int, ...]] = [()] * count
        self.busy = [False] * count
        self.used = [0] * count  # when each row was last taken (a counter)
        self._clock = 0

    @property
    def entries(self) -> int:
        return len(self.held)

    def __len__(self) -> int:  # rows holding a prompt worth reusing
        return sum(len(h) >= MIN_REUSE for h in self.held)

    def free_count(self) -> int:
        return self.busy.count(False)

    def take(self, ids: list[int], reuse: bool, left: int = 1) -> tuple[int, int]:
        """(row, cached): a free row for the prompt `ids` and how many of its first tokens that
        row already holds (at least `left` tokens are always left to compute)."""
        free = [r for r, busy in enumerate(self.busy) if not busy]
        best, cached = None, 0
        if reuse:
            key = tuple(ids)
            for row in free:
                shared = min(len(os.path.commonprefix([self.held[row], key])), len(ids) - left)
                if shared > cached:
                    best, cached = row, shared
        if best is None or cached < MIN_REUSE:
            best, cached = min(free, key=lambda r: (len(self.held[r]) >= MIN_REUSE, self.used[r])), 0
        self._clock += 1
        self.busy[best], self.used[best] = True, self._clock
        self.held[best] = ()  # being overwritten past `cached`; set again when the prompt is in
        return best, cached

    def hold(self, row: int, ids: list[int]) -> None:
        """`row` now holds the keys and values of the prompt `ids`."""
        self.held[row] = tuple(ids)

    def release(self, row: int) -> None:
        self.busy[row] = False
