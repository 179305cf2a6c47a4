"""The scheduler: which sequences run, and in which row of the KV cache.

Sequences wait in arrival order and start as rows free up (continuous batching: a sequence
joins the running ones between two decode steps and leaves as soon as it ends). Each row keeps
the tokens whose keys and values it holds after its sequence ended (the prompt and the answer
but its last token); a new sequence goes to the free row that shares the longest start with its
prompt and computes only the rest (llama.cpp's `cache_prompt`, `tokens_cached` in its answers):
an editor sends the whole file on every keystroke, so successive prompts share all but their
last few tokens. Nothing is copied: the row is simply continued. Otherwise the least recently
used free row is taken. Work done ahead of a request (engine.Engine.warm) must not overwrite
what a request left in a row: it takes another row and starts from a copy of the shared start
(`fork`), and later guesses continue that row in place.

A row also remembers the answer of its last greedy sequence (`Answer`): a greedy request whose
prompt is that prompt followed by the first tokens of that answer (the user typed what was
suggested) gets the rest of the answer without the model, as greedy decoding from those same
tokens would give it (`known`).

Keys, values and answers computed under one LoRA adapter (lora.py) are wrong for another and
for the base: a row also records the adapter it was computed under (set when it is taken), and
only a sequence of that same adapter (or of the base, for a base row) reuses its tokens or its
answer, or has them copied into another row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MIN_REUSE = 16  # shorter common starts are recomputed: not worth losing a row's other prompt for


@dataclass(frozen=True)
class Answer:
    """What a greedy sequence chose after its prompt, its last token (which has no keys and
    values in the row yet) included."""

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]


class Rows:
    """The cache rows: which tokens each holds, its last answer, and which are in use."""

    def __init__(self, count: int):
        self.held: list[tuple[int, ...]] = [()] * count
        self.answers: list[Answer | None] = [None] * count
        self.guessed = [0] * count  # which guess (> 0) a row holds, computed ahead: overwritten by a later one
        self.adapter: list[str | None] = [None] * count  # the adapter its keys and values were computed under
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

    def shared(self, ids: list[int] | tuple[int, ...], adapter: str | None = None) -> int:
        """The most leading tokens of `ids` that any row of `adapter` holds (busy or not)."""
        key = tuple(ids)
        return max(
            (len(os.path.commonprefix([held, key])) for held, made in zip(self.held, self.adapter) if made == adapter),
            default=0,
        )

    def take(
        self, ids: list[int], reuse: bool, left: int = 1, fork: int = 0, adapter: str | None = None
    ) -> tuple[int, int, int | None]:
        """(row, cached, source): a free row for the prompt `ids` under `adapter` and how many of
        its first tokens are already there (at least `left` tokens are always left to compute).
        With `fork` (a guess's number), a row holding more than the shared start is not
        overwritten unless an earlier guess filled it: another row is taken and `source` names
        the row whose first `cached` tokens must be copied into it first."""
        free = [r for r, busy in enumerate(self.busy) if not busy]
        best, cached, source = None, 0, None
        if reuse:
            key = tuple(ids)
            for row in (r for r in free if self.adapter[r] == adapter):
                shared = min(len(os.path.commonprefix([self.held[row], key])), len(ids) - left)
                if shared > cached:
                    best, cached = row, shared
        if best is None or cached < MIN_REUSE:
            best, cached = self._least_useful(free), 0
        elif fork and len(self.held[best]) > cached and not 0 < self.guessed[best] < fork and len(free) > 1:
            source, best = best, self._least_useful([r for r in free if r != best])
        self._clock += 1
        self.busy[best], self.used[best] = True, self._clock
        self.held[best], self.answers[best] = (), None  # overwritten past `cached`; set again by hold
        self.adapter[best] = adapter
        return best, cached, source

    def _least_useful(self, rows: list[int]) -> int:
        return min(rows, key=lambda r: (len(self.held[r]) >= MIN_REUSE, self.used[r]))

    def known(self, ids: list[int], adapter: str | None = None) -> tuple[int, tuple[int, ...]] | None:
        """(row, tokens): a free row of `adapter` whose last answer continues `ids` (its prompt
        followed by the answer's first tokens), and the answer's tokens after `ids`; None where
        none does."""
        key = tuple(ids)
        for row, answer in enumerate(self.answers):
            if (
                answer is None
                or self.busy[row]
                or self.adapter[row] != adapter
                or key[: len(answer.prompt)] != answer.prompt
            ):
                continue
            typed = key[len(answer.prompt) :]
            if len(typed) < len(answer.tokens) and answer.tokens[: len(typed)] == typed:
                return row, answer.tokens[len(typed) :]
        return None

    def claim(self, row: int) -> None:
        """Mark a free `row` in use without changing what it holds."""
        self._clock += 1
        self.busy[row], self.used[row] = True, self._clock

    def hold(self, row: int, ids: list[int] | tuple[int, ...], answer: Answer | None = None, guessed: int = 0) -> None:
        """`row` now holds the keys and values of the tokens `ids` (and `answer`, if greedy;
        `guessed`: the number of the guess that computed them ahead of any request)."""
        self.held[row], self.answers[row], self.guessed[row] = tuple(ids), answer, guessed

    def release(self, row: int) -> None:
        self.busy[row] = False
