"""Prompts for the four ways of using the model (reference/deepseek-coder.md, "Inference
conventions"), built only from the shared formats module, and fitted to the context.

- completion: the text after BOS; a prompt too long for the context is cut from the left (the
  most recent text matters most for a continuation), and a warning says so;
- insertion: `<｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>`; too long is an error, since
  cutting either side would change what the hole means;
- chat: the released template with the generation prompt; too long is an error;
- repository-level completion: see repo_context.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dscoder import formats
from dscoder.errors import UserError

log = logging.getLogger("dscoder")


@dataclass
class Prompt:
    text: str  # what the model sees (as text, for --show-prompt)
    ids: list[int]
    truncated: int = 0  # tokens cut from the left


def _budget(engine, max_new_tokens: int) -> int:
    room = engine.context - max_new_tokens
    if room < 2:
        raise UserError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the {engine.context}-token context")
    return room


def completion(engine, text: str, max_new_tokens: int) -> Prompt:
    ids = engine.encode(text)
    room = _budget(engine, max_new_tokens)
    if len(ids) <= room:
        return Prompt(text, ids)
    cut = len(ids) - room
    kept = ids[:1] + ids[1 + cut:]  # keep BOS, drop the oldest text
    log.warning("the prompt has %d tokens, more than the %d that fit: the first %d were dropped",
                len(ids), room, cut)
    return Prompt(engine.tokenizer.decode(kept), kept, cut)


def _whole(engine, text: str, max_new_tokens: int, what: str) -> Prompt:
    ids = engine.encode(text)
    room = _budget(engine, max_new_tokens)
    if len(ids) > room:
        raise UserError(f"the {what} prompt has {len(ids)} tokens but only {room} fit in the context with "
                        f"{max_new_tokens} new tokens (shorten it or lower max_new_tokens)")
    return Prompt(text, ids)


def insertion(engine, prefix: str, suffix: str, max_new_tokens: int) -> Prompt:
    return _whole(engine, formats.fim_prompt(prefix, suffix), max_new_tokens, "insertion")


def chat(engine, messages: list[dict], max_new_tokens: int) -> Prompt:
    try:
        text = formats.render_chat(messages, add_generation_prompt=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return _whole(engine, text, max_new_tokens, "chat")


def split_at_cursor(text: str, line: int, column: int | None) -> tuple[str, str]:
    """(prefix, suffix) of a file at 1-based `line` and 0-based `column` (default: end of line)."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise UserError(f"--line {line} is outside the file (1..{len(lines)})")
    current = lines[line - 1]
    column = len(current) if column is None else column
    if not 0 <= column <= len(current):
        raise UserError(f"--column {column} is outside line {line} (0..{len(current)})")
    before = "\n".join(lines[:line - 1] + [current[:column]])
    after = "\n".join([current[column:]] + lines[line:])
    return before, after
