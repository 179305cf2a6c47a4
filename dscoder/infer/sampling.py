"""Choosing tokens and ending generations: pure functions of logits, text and a generator.

- `next_token`: greedy, or temperature with top-k and top-p (nucleus) filtering, seeded;
- `find_stop` / `held_back`: stop sequences found across token boundaries, trimmed from the
  output, and the tail held back while streaming in case it is the start of one;
- `IncrementalDecoder`: text deltas from byte-level tokens without splitting UTF-8 characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from dscoder import config
from dscoder.config import AT_LEAST_ONE, NON_NEGATIVE, Range

# The bounds of the sampling settings, shared by the CLI flags, the evaluation settings and the
# server's request schema.
NewTokens = Annotated[int, AT_LEAST_ONE]
Temperature = Annotated[float, Range(0, 2)]
TopP = Annotated[float, Range(0, 1, low_open=True)]
TopK = Annotated[int, NON_NEGATIVE]
GREEDY_BELOW = 1e-4  # temperatures below this sample greedily

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated (out-of-bounds values raise a SettingError naming the field)."""

    max_new_tokens: NewTokens = 256
    temperature: Temperature = 0.0  # 0: greedy
    top_p: TopP = 1.0
    top_k: TopK = 0  # 0: no limit
    seed: Annotated[int | None, NON_NEGATIVE] = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: Annotated[int | None, NON_NEGATIVE] = None  # None: none; k: the chosen token's and k alternatives

    def __post_init__(self) -> None:
        config.check(self)


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a row of logits. (V,) -> id."""
    import torch  # here, so that the settings above import without torch (for --help)

    if params.temperature < GREEDY_BELOW:  # dividing by a tinier temperature overflows to inf
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs >= params.top_p  # keep the smallest set reaching top_p
        drop[0] = False  # and always the most likely token (a tiny top_p could drop them all)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logits: torch.Tensor, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability and the k most likely alternatives. (V,) -> ..."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logprobs, k) if k > 0 else (logprobs[:0], logprobs[:0].long())
    return float(logprobs[token]), [(int(i), float(v)) for i, v in zip(ids, values)]


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """Where the earliest stop sequence begins in `text` (searching from about `start`)."""
    found = [i for s in stops if s and (i := text.find(s, max(0, start - len(s) + 1))) >= 0]
    return min(found) if found else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


@dataclass
class IncrementalDecoder:
    """Text deltas for a growing list of token ids. A delta is released only when it does not
    end inside a UTF-8 character (byte-level tokens can split one)."""

    tokenizer: object
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix) :]

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character decodes as U+FFFD)."""
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]
