"""The DeepSeek-Coder text conventions, defined once for every stage.

Special tokens (docs/deepseek-coder.md#tokenizer), fill-in-the-middle layouts (PSM as
released, SPM after Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the
Middle"), the repository-sample layout (paper section 2.3: files in dependency order, each headed
by a `#{path}` line) and the released instruct chat template. The data builder, the trainer, the
inference engine, the server and the evaluator all render text through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Literal, Mapping, Sequence

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
FIM_HOLE = "<｜fim▁hole｜>"
FIM_BEGIN = "<｜fim▁begin｜>"
FIM_END = "<｜fim▁end｜>"
PAD = "<pad>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
EOT = "<|EOT|>"


@dataclass(frozen=True)
class AddedToken:
    """One token added after the learned BPE vocabulary."""

    content: str
    special: bool  # special tokens are dropped by decode(skip_special_tokens=True)


# In the released order (ids 32013..32021 in the DeepSeek vocabulary). Only BOS and EOS are
# "special"; the FIM, chat and EOT tokens are ordinary added tokens, so they survive decoding.
ADDED_TOKENS: tuple[AddedToken, ...] = (
    AddedToken(BOS, special=True),
    AddedToken(EOS, special=True),
    AddedToken(FIM_HOLE, special=False),
    AddedToken(FIM_BEGIN, special=False),
    AddedToken(FIM_END, special=False),
    AddedToken(PAD, special=False),
    AddedToken(USER, special=False),
    AddedToken(ASSISTANT, special=False),
    AddedToken(EOT, special=False),
)

FIMMode = Literal["psm", "spm"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(value):
    """`value` (a string, or a JSON value of lists and objects) with each lone surrogate in its
    strings replaced by U+FFFD, as a UTF-8 encoder replaces it, and how many there were. A JSON
    "\\ud83d" escape (half of an emoji that an editor's UTF-16 string was cut through) and a byte
    that is not UTF-8 in a command-line argument (read as "\\udcff") give one; no tokenizer takes
    such a string."""
    if isinstance(value, str):
        return _LONE_SURROGATE.subn("\ufffd", value)
    if isinstance(value, list):
        pairs = [well_formed(v) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, dict):
        pairs = {k: well_formed(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
    return value, 0


def fim_prompt(prefix: str, suffix: str, mode: FIMMode = "psm") -> str:
    """The text a model continues with the middle, e.g. for insertion at a cursor.

    PSM (released): `<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>`.
    SPM (Bavarian et al., the variant trained jointly with PSM):
    `<｜fim▁begin｜><｜fim▁hole｜>{suffix}<｜fim▁end｜>{prefix}`, so the middle continues the prefix.
    """
    if mode == "psm":
        return f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}"
    if mode == "spm":
        return f"{FIM_BEGIN}{FIM_HOLE}{suffix}{FIM_END}{prefix}"
    raise ValueError(f"unknown FIM mode {mode!r} (expected 'psm' or 'spm')")


def fim_document(prefix: str, middle: str, suffix: str, mode: FIMMode = "psm") -> str:
    """A FIM training document: the prompt followed by the middle (the packer appends EOS)."""
    return fim_prompt(prefix, suffix, mode) + middle


def file_header(path: str) -> str:
    """The line that introduces each file of a repository sample (`#utils.py` in the README)."""
    return f"#{path}\n"


def repo_sample(files: Iterable[tuple[str, str]]) -> str:
    """Files `(path, text)` in order, each preceded by its `#{path}` line.

    A file that does not end with a newline gets one, so the next header starts its own line.
    """
    parts = []
    for path, text in files:
        parts.append(file_header(path))
        parts.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(parts)


def split_repo_sample(text: str, paths: list[str]) -> list[tuple[str, str]]:
    """The inverse of `repo_sample`, given the sample's paths in order: `(path, text)` per file.
    Headers are looked for in order at line starts, so a `#` comment is not taken for one."""
    bounds, position = [], 0
    for path in paths:
        header = file_header(path)
        at = position if text.startswith(header, position) else text.find("\n" + header, position) + 1
        if not text.startswith(header, at) or (at == 0 and position > 0):
            raise ValueError(f"no header for {path!r} in the repository sample")
        bounds.append((path, at, at + len(header)))
        position = at + len(header)
    ends = [at for _, at, _ in bounds[1:]] + [len(text)]
    return [(path, text[body:end]) for (path, _, body), end in zip(bounds, ends)]


def repo_prompt(context: Iterable[tuple[str, str]], path: str, text_before_cursor: str) -> str:
    """Repository-level completion: context files in dependency order, then the file being
    written, cut at the cursor."""
    return repo_sample(context) + file_header(path) + text_before_cursor


@lru_cache(maxsize=1)
def chat_template() -> str:
    """The released DeepSeek-Coder instruct chat template, byte for byte."""
    return resources.files("dscoder").joinpath("chat_template.jinja").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _compiled_chat_template():
    # The same environment settings transformers uses for apply_chat_template, so both render
    # the same bytes.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat_template())


def render_chat(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False, bos_token: str = BOS
) -> str:
    """Render chat `messages` ({role, content}) with the released template."""
    for i, message in enumerate(messages):
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: role must be system, user or assistant, got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")
    return _compiled_chat_template().render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=bos_token
    )
