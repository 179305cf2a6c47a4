"""Prompts for the four ways of using the model (docs/deepseek-coder.md#inference-conventions),
built only from the shared formats module, and fitted to the context.

- completion: the text after BOS; a prompt too long for the context is cut from the left (the
  most recent text matters most for a continuation), and a warning says so;
- insertion: `<｜fim▁begin｜>[context files][#path]prefix<｜fim▁hole｜>suffix<｜fim▁end｜>[typed]`,
  fitted as editors need it (and as llama.cpp's server fits it): the prefix nearest the cursor
  first (at least three quarters of the room), then the suffix nearest the cursor, then as many
  context files as fit; cuts fall at line starts, where the released pre-tokenizer always splits,
  so the kept text tokenizes as it would whole; a cut prefix starts at a line chosen by its
  content, so it keeps its start as the user types on. A server bounds the file's text around the
  cursor by a `window` (llama.cpp's n_batch): what follows the cursor is prefilled again on every
  keystroke, while context files before it stay in the prompt cache;
- chat: the released template with the generation prompt; too long is an error;
- repository-level completion: see repo_context.py;
- CrossCodeEval's prompt: retrieved cross-file snippets, then the file before the cursor
  (`cross_file`).
"""

from __future__ import annotations

import logging
import weakref
import zlib
from dataclasses import dataclass
from typing import Callable

from dscoder import formats
from dscoder.errors import UserError

log = logging.getLogger("dscoder")


@dataclass
class Prompt:
    text: str  # what the model sees (as text, for --show-prompt)
    ids: list[int]
    truncated: int = 0  # tokens left out (cut from the left, or around an insertion's cursor)
    late: int = 0  # of those, left out so that the prompt is computed in time (insertion's time_limit)


def _budget(engine, max_new_tokens: int) -> int:
    room = engine.context - max_new_tokens
    if room < 2:
        raise UserError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the {engine.context}-token context"
        )
    return room


def completion(engine, text: str, max_new_tokens: int) -> Prompt:
    ids = engine.encode(text)
    room = _budget(engine, max_new_tokens)
    if len(ids) <= room:
        return Prompt(text, ids)
    cut = len(ids) - room
    kept = ids[:1] + ids[1 + cut :]  # keep BOS, drop the oldest text
    log.warning("the prompt has %d tokens, more than the %d that fit: the first %d were dropped", len(ids), room, cut)
    return Prompt(engine.tokenizer.decode(kept), kept, cut)


class TooLong(UserError):
    """A prompt that must be whole does not fit: `tokens` it has, `room` there is."""

    def __init__(self, message: str, tokens: int, room: int):
        super().__init__(message)
        self.tokens, self.room = tokens, room


def _whole(engine, text: str, max_new_tokens: int, what: str) -> Prompt:
    ids = engine.encode(text)
    room = _budget(engine, max_new_tokens)
    if len(ids) > room:
        raise TooLong(
            f"the {what} prompt has {len(ids)} tokens but only {room} fit in the context with "
            f"{max_new_tokens} new tokens (shorten it or lower max_new_tokens)",
            len(ids),
            room,
        )
    return Prompt(text, ids)


PREFIX_SHARE = 0.75  # of the room, the least the prefix may take when the suffix is long
ANCHOR_LINES = 32  # a cut prefix may lose up to this many lines more, to start where it started before


def _rank(line: str) -> int:
    """Which line a cut prefix starts at, among its first lines that could start it: the one of
    least rank (a hash of its content; lines of little code rank last). As the text slides
    (llama.vim sends the 256 lines before the cursor), the same line keeps the least rank until it
    leaves the range, so the prompt keeps its start while the user types on."""
    return zlib.crc32(line.encode()) if len(line.strip()) >= 8 else 2**32


@dataclass(frozen=True)
class TimeLimit:
    """At most `ms` milliseconds to compute an insertion's prompt, as `cost(ids)` expects it to
    take (a server's measured speed and what its prompt cache holds: engine.Engine.prefill_ms)."""

    cost: Callable[[list[int]], float]
    ms: float


def insertion(
    engine,
    prefix: str,
    suffix: str,
    max_new_tokens: int,
    context: list[tuple[str, str]] = (),
    path: str | None = None,
    typed: str = "",
    window: int | None = None,
    time_limit: TimeLimit | None = None,
) -> Prompt:
    """The released FIM prompt for a hole between `prefix` and `suffix`, with repository
    `context` files `(path, text)` before it (each under its `#path` line, the current file's
    `path` heading the prefix as in training samples) and `typed`, text already typed after the
    cursor, after the FIM end token (the middle continues it). Fitted to the context as the
    module docstring says, the prefix and suffix together to at most `window` tokens when given;
    with `time_limit`, the suffix's far lines, then the context files given first, are left out
    until the prompt can be computed in time (the prefix is kept). `truncated` counts the tokens
    left out, `late` those left out for time."""
    missing = [
        t
        for t in (formats.FIM_BEGIN, formats.FIM_HOLE, formats.FIM_END)
        if engine.tokenizer.convert_tokens_to_ids(t) in (None, engine.tokenizer.unk_token_id)
    ]
    if missing:
        raise UserError(
            f"this model's tokenizer has no {missing[0]} token, so it cannot fill in the middle (use completion)"
        )
    room = _budget(engine, max_new_tokens)
    header = formats.file_header(path) if path else ""
    typed_ids = engine.tokenizer(typed, add_special_tokens=False)["input_ids"] if typed else []
    fixed = len(engine.encode(formats.fim_prompt(header, ""))) + len(typed_ids)  # BOS, FIM tokens, header, typed
    if fixed > room:
        raise UserError(
            f"the text typed after the cursor has {fixed} tokens but only {room} fit in the context "
            f"with {max_new_tokens} new tokens"
        )
    left = room - fixed
    local = left if window is None else min(left, window)  # for the file's own text
    prefix_lines, suffix_lines = _line_ids(engine, prefix), _line_ids(engine, suffix)
    kept_prefix = _keep(
        engine, prefix_lines, max(int(PREFIX_SHARE * local), local - _cost(suffix_lines)), from_end=True
    )
    if len(kept_prefix) < len(prefix_lines) and len(kept_prefix) > 1:
        # start at a line chosen by its content, not by its distance from the cursor or from the
        # text's start (llama.vim sends the 256 lines before the cursor: a window that slides
        # one line per Enter), so that the prompt keeps its start while the user types on and
        # the prompt cache can reuse it
        first = len(prefix_lines) - len(kept_prefix)
        kept_prefix = prefix_lines[
            min(
                range(first, first + min(ANCHOR_LINES, len(kept_prefix) // 2)),
                key=lambda i: (_rank(prefix_lines[i][0]), i),
            ) :
        ]
    local -= _cost(kept_prefix)
    kept_suffix = _keep(engine, suffix_lines, local, from_end=False)
    left -= _cost(kept_prefix + kept_suffix)
    files, left_out = [], 0
    for file_path, text in reversed(list(context)):  # the last files given are the nearest: kept first
        lines = _line_ids(engine, formats.repo_sample([(file_path, text)]))
        if _cost(lines) <= left:
            files.insert(0, lines)
            left -= _cost(lines)
        else:
            left_out += _cost(lines)
    head = _line_ids(engine, header) + kept_prefix
    bos = [] if engine.tokenizer.bos_token_id is None else [engine.tokenizer.bos_token_id]
    fim = [engine.tokenizer.convert_tokens_to_ids(t) for t in (formats.FIM_BEGIN, formats.FIM_HOLE, formats.FIM_END)]

    def assemble(files: list, suffix_kept: list) -> list[int]:
        """The prompt's ids, built from its lines' (the pre-tokenizer splits at every newline)."""
        ids = bos + fim[:1]
        for lines in files + [head]:
            for _, line in lines:
                ids.extend(line)
        ids.append(fim[1])
        for _, line in suffix_kept:
            ids.extend(line)
        return ids + fim[2:] + typed_ids

    ids, late, files_late = assemble(files, kept_suffix), 0, 0
    if time_limit is not None and time_limit.cost(ids) > time_limit.ms:
        suffix_before, files_before = _cost(kept_suffix), sum(_cost(f) for f in files)
        files, kept_suffix, ids = _in_time(assemble, files, kept_suffix, time_limit)
        files_late = files_before - sum(_cost(f) for f in files)
        late = suffix_before - _cost(kept_suffix) + files_late
    text = (
        formats.fim_prompt("".join(t for f in files + [head] for t, _ in f), "".join(t for t, _ in kept_suffix)) + typed
    )
    if len(ids) > room:  # a cut inside a line can tokenize a little longer than its parts
        raise UserError(
            f"the insertion prompt has {len(ids)} tokens after fitting; only {room} fit in the context "
            f"with {max_new_tokens} new tokens"
        )
    dropped = _cost(prefix_lines) + _cost(suffix_lines) - _cost(kept_prefix + kept_suffix) + left_out + files_late
    if dropped:
        # a server's window cuts on most keystrokes: there `truncated` says so, not the log
        log.log(
            logging.INFO if window else logging.WARNING,
            "the insertion prompt did not fit in %d tokens: %d tokens were left out (kept the text nearest the cursor)",
            min(room, window or room),
            dropped,
        )
    return Prompt(text, ids, dropped, late)


def _in_time(assemble, files: list, suffix: list, limit: TimeLimit) -> tuple[list, list, list[int]]:
    """(files, suffix lines, ids) of the fullest prompt computed within `limit`: the most suffix
    lines nearest the cursor that fit, else fewer context files (the first given go first)
    under the most suffix lines that then fit; the cheapest where none fits."""

    def most_suffix(files: list) -> tuple[int, list[int]]:
        low, high = 0, len(suffix)  # the cost grows with the lines kept
        while low < high:
            mid = (low + high + 1) // 2
            if limit.cost(assemble(files, suffix[:mid])) <= limit.ms:
                low = mid
            else:
                high = mid - 1
        return low, assemble(files, suffix[:low])

    cheapest = None
    for first in range(len(files) + 1):  # files the server's cache does not hold are not worth their time
        kept, ids = most_suffix(files[first:])
        cost = limit.cost(ids)
        if cost <= limit.ms:
            return files[first:], suffix[:kept], ids
        if cheapest is None or cost < cheapest[0]:
            cheapest = (cost, files[first:], suffix[:kept], ids)
    return cheapest[1:]


_LINE_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {line: ids}
_LINE_IDS_MOST = 200_000  # lines kept per tokenizer: an editor sends the same lines again and again


def _line_ids(engine, text: str) -> list[tuple[str, list[int]]]:
    """(line with its newline, its token ids) for each line of `text`; the ids of the whole text
    are theirs one after another, since the pre-tokenizer splits at every newline."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    known = _LINE_IDS.setdefault(engine.tokenizer, {})
    found = [known.get(line) for line in lines]
    missing = list({line for line, ids in zip(lines, found) if ids is None})
    if missing:
        new = dict(zip(missing, engine.tokenizer(missing, add_special_tokens=False)["input_ids"]))
        if len(known) + len(new) > _LINE_IDS_MOST:
            known.clear()
        known.update(new)
        found = [new[line] if ids is None else ids for line, ids in zip(lines, found)]
    return list(zip(lines, found))


def _cost(lines: list[tuple[str, list[int]]]) -> int:
    return sum(len(ids) for _, ids in lines)


def _keep(engine, lines: list[tuple[str, list[int]]], budget: int, from_end: bool) -> list[tuple[str, list[int]]]:
    """The whole lines nearest the cursor (the end of a prefix, the start of a suffix) that fit
    in `budget` tokens; the line at the cursor itself is cut by characters if alone it does not."""
    order = reversed(lines) if from_end else iter(lines)
    kept, used = [], 0
    for line, ids in order:
        if used + len(ids) > budget:
            if not kept and budget > 0:  # one huge line at the cursor: the most characters next to it that fit
                low, high = 0, len(line)
                while low < high:
                    mid = (low + high + 1) // 2
                    piece = line[-mid:] if from_end else line[:mid]
                    if len(engine.tokenizer(piece, add_special_tokens=False)["input_ids"]) <= budget:
                        low = mid
                    else:
                        high = mid - 1
                if low:
                    piece = line[-low:] if from_end else line[:low]
                    kept.append((piece, engine.tokenizer(piece, add_special_tokens=False)["input_ids"]))
            break
        kept.append((line, ids))
        used += len(ids)
    return kept[::-1] if from_end else kept


def cross_file(engine, prompt: str, context: str, max_new_tokens: int, context_tokens: int) -> Prompt:
    """CrossCodeEval's left-to-right prompt (its scripts/eval.py and vllm_inference.py): the
    retrieved cross-file `context` (already rendered as comment lines) cut from its end to
    `context_tokens`, a newline, then the file's text before the cursor cut from its start to
    what the context leaves; without context (`""`), the file's text alone. Cuts fall at line
    starts as in `insertion`; `truncated` counts the tokens left out."""
    room = _budget(engine, max_new_tokens) - 1  # BOS
    context_lines = _line_ids(engine, context)
    kept_context = _keep(engine, context_lines, min(context_tokens, room), from_end=False)
    before = "".join(t for t, _ in kept_context)
    before += "\n" if before else ""  # the scripts' separator after the context
    prompt_lines = _line_ids(engine, prompt)
    left = room - len(engine.encode(before)) + 1 if before else room
    kept_prompt = _keep(engine, prompt_lines, max(0, left), from_end=True)
    text = before + "".join(t for t, _ in kept_prompt)
    ids = engine.encode(text)
    dropped = _cost(context_lines + prompt_lines) - _cost(kept_context + kept_prompt)
    if len(ids) > room + 1:  # a cut inside a line can tokenize a little longer than its parts
        cut = len(ids) - room - 1
        dropped += cut
        ids = ids[:1] + ids[1 + cut :]
        text = engine.tokenizer.decode(ids[1:])
    return Prompt(text, ids, dropped)


def chat(engine, messages: list[dict], max_new_tokens: int) -> Prompt:
    try:
        text = formats.render_chat(messages, add_generation_prompt=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return _whole(engine, text, max_new_tokens, "chat")


@dataclass(frozen=True)
class EditorStop:
    """Where an editor wants an insertion to end (DeepSeek-Coder's maintainers advise one line,
    one block or about 64 tokens rather than waiting for EOS). Rules, in order:

    - the cursor is mid-line (text follows it on its line): the insertion is that one line;
    - a later line indented less than `min_indent` (llama.cpp's `n_indent`, else the cursor
      line's indentation) ends it before that line;
    - a blank line after at least one complete line ends it (the block is done);
    - at the end, text that repeats what already follows the cursor on its line is dropped
      (typing `f(` before `)`: the model's `x)` is returned as `x`).

    `cut(text)` is the position to end at, or None to go on; `final(text)` the text returned;
    `streamable(text)` how much of it may be streamed before the end."""

    single_line: bool
    min_indent: int
    rest_of_line: str

    @classmethod
    def at(cls, prefix: str, suffix: str, n_indent: int = 0) -> "EditorStop":
        cursor_line = prefix.rsplit("\n", 1)[-1]
        rest = suffix.split("\n", 1)[0]
        indent = len(cursor_line) - len(cursor_line.lstrip(" \t"))
        return cls(single_line=bool(rest.strip()), min_indent=n_indent or indent, rest_of_line=rest.strip())

    def cut(self, text: str) -> int | None:
        newline = text.rfind("\n")
        if newline < 0:
            return None
        if self.single_line:
            return text.find("\n")
        if text.endswith("\n\n") and text[:-2].strip():  # a blank line after some code
            return len(text) - 2
        last = text[newline + 1 :]
        body = last.lstrip(" \t")
        if body and len(last) - len(body) < self.min_indent:  # the new line dedents
            return newline
        return None

    def final(self, text: str) -> str:
        if self.rest_of_line and text.rstrip().endswith(self.rest_of_line):
            text = text.rstrip()[: -len(self.rest_of_line)]
        return text.rstrip() if not self.single_line and text.endswith("\n") else text

    def streamable(self, text: str) -> int:
        """Whole lines only (a rule may still cut at any later line start) and no trailing blank
        text (which `final` strips): what is streamed is never taken back."""
        return min(text.rfind("\n"), len(text.rstrip()))


def split_at_cursor(text: str, line: int, column: int | None) -> tuple[str, str]:
    """(prefix, suffix) of a file at 1-based `line` and 0-based `column` (default: end of line)."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise UserError(f"--line {line} is outside the file (1..{len(lines)})")
    current = lines[line - 1]
    column = len(current) if column is None else column
    if not 0 <= column <= len(current):
        raise UserError(f"--column {column} is outside line {line} (0..{len(current)})")
    before = "\n".join(lines[: line - 1] + [current[:column]])
    after = "\n".join([current[column:]] + lines[line:])
    return before, after


# --- benchmark tasks: what a model is asked (the evaluation's prompts) ------------------------------

# The user turns of DeepSeek-Coder's released evaluation scripts (docs/evaluation.md shows them and
# the script versions they match). HumanEval in every language: `Evaluation/HumanEval/
# eval_instruct.py`, `build_deepseekcoder_instruction`, as it reads since 9 November 2023 (the
# template is stripped, then filled with the language's name in lower case and the stripped prompt).
HUMANEVAL_INSTRUCT = (
    "Please continue to complete the function. You are not allowed to modify the given code and do "
    "the completion only. Please return all completed function in a codeblock. Here is the given "
    "code to do completion:\n```{lang}\n{prompt}\n```"
)
MBPP_INSTRUCT = (
    "Please refer the given examples and generate a python function for my problem.\n"
    "Examples are listed as follows:\n{shots}\n\nHere is my problem:\n{problem}"
)
# `Evaluation/LeetCode/vllm_inference.py`: the row's `prompt_sft`, with this line appended for --cot
LEETCODE_COT = "\nYou need first write a step-by-step outline and then write the code."
# the languages of the released HumanEval script, by dscoder's language name: the name its prompt
# and code block use (`languge_settings[...]["full_name"]`)
INSTRUCT_LANGUAGES = {
    "python": "Python",
    "cpp": "cpp",
    "java": "Java",
    "csharp": "csharp",
    "php": "PHP",
    "typescript": "TypeScript",
    "javascript": "JavaScript",
    "shell": "Bash",
}
CHAT_FORMATS = ("humaneval", "humaneval-x", "multipl-e", "mbpp", "leetcode")  # those with a released instruct turn


def _mbpp_problem(record: dict, with_code: bool) -> str:
    text = f">>> Problem:\n{record['text'].strip()}\n>>> Test Cases:\n" + "\n".join(record["test_list"]) + "\n"
    if with_code:
        code = record["code"].replace("\r", "").replace("\t", "    ")
        text += f"\n>>> Code:\n```python\n{code}\n```"
    return text


def instruct_messages(task, cot: bool = False) -> list[dict]:
    """The user turn DeepSeek-Coder's released evaluation scripts give an instruct model for a
    task (HumanEval in its eight languages, MBPP, LeetCode Contest; `cot`: LeetCode's chain of
    thought); the chat template renders it (docs/evaluation.md)."""
    if cot and task.format != "leetcode":
        raise UserError(f"--cot: only LeetCode Contest has a chain-of-thought prompt; this benchmark is {task.format}")
    if task.format in ("humaneval", "humaneval-x", "multipl-e"):
        name = INSTRUCT_LANGUAGES.get(task.language)
        if name is None:
            raise UserError(
                f"--chat: DeepSeek-Coder's instruct evaluation covers {', '.join(INSTRUCT_LANGUAGES)}; "
                f"task {task.task_id} is {task.language} (score a base model without --chat)"
            )
        content = HUMANEVAL_INSTRUCT.format(lang=name.lower(), prompt=task.record["prompt"].strip())
    elif task.format == "mbpp":
        shots = "\n\n".join(f"- Example {i}:\n{_mbpp_problem(shot, True)}" for i, shot in enumerate(task.shots, 1))
        content = MBPP_INSTRUCT.format(shots=shots, problem=_mbpp_problem(task.record, False))  # its newline kept
    elif task.format == "leetcode":
        content = task.record["prompt_sft"] + (LEETCODE_COT if cot else "")
    else:
        raise UserError(
            f"--chat: the instruct evaluation prompt is defined for {', '.join(CHAT_FORMATS)} "
            f"benchmarks; this one is {task.format} (score a base model without --chat)"
        )
    return [{"role": "user", "content": content}]


def task_text(task) -> str:
    """The text a base model continues for a benchmark task (the FIM prompt for insertion
    tasks), before fitting."""
    return formats.fim_prompt(task.prompt, task.suffix) if task.suffix is not None else task.prompt


def task_prompt(engine, task, max_new_tokens: int, instruct: bool = False, cot: bool = False) -> tuple[Prompt, int]:
    """A task's prompt and its new-token limit. Base: the whole prompt with as many new tokens
    as fit (up to `max_new_tokens`); a prompt too long for that is fitted (the text nearest the
    hole or the end kept, BOS and the FIM tokens always) with a quarter of the context left for
    the answer. Instruct: the instruct turn through the chat template, whole."""
    if instruct:
        prompt = chat(engine, instruct_messages(task, cot), 1)
        return prompt, max(1, min(max_new_tokens, engine.context - len(prompt.ids)))
    text = task_text(task)
    ids = engine.encode(text)
    if len(ids) < engine.context - 1:
        return Prompt(text, ids), max(1, min(max_new_tokens, engine.context - len(ids) - 1))
    new_tokens = min(max_new_tokens, engine.context // 4)
    if task.suffix is not None:
        return insertion(engine, task.prompt, task.suffix, new_tokens), new_tokens
    return completion(engine, task.prompt, new_tokens), new_tokens
