"""Instruction data (paper section 3.4): chat rendering with the released template, loss only on
the responses and their `<|EOT|>`, and instruction pairs derived from a corpus.

Rows are `{"instruction", "output"}` (Evol-Instruct style) or `{"messages": [...]}`. A response
is trained as `{content}\\n<|EOT|>`, as DeepSeek's fine-tuning script does; the prompt, the
system text and the newline after `<|EOT|>` are context only.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import textwrap
from pathlib import Path
from typing import Callable, Iterator

from dscoder import formats
from dscoder.errors import UserError

TRAINED_SUFFIX = "\n" + formats.EOT


def read_conversations(path: str | Path) -> Iterator[list[dict]]:
    """Conversations from a JSON-lines file, validated row by row."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"instruction data not found: {path}")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if isinstance(row, dict) and isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str):
                messages = [
                    {"role": "user", "content": row["instruction"]},
                    {"role": "assistant", "content": row["output"]},
                ]
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                messages = row["messages"]
            else:
                raise UserError(f"{path}:{number}: expected 'instruction' and 'output' strings or a 'messages' list")
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
                raise UserError(f"{path}:{number}: no assistant message to learn from")
            try:
                rendered = formats.render_chat(messages)
            except ValueError as exc:
                raise UserError(f"{path}:{number}: {exc}") from None
            if formats.well_formed(rendered)[1]:
                raise UserError(
                    f"{path}:{number}: holds half of a surrogate pair (a lone \\ud800-\\udfff escape), not text"
                )
            yield messages


def trained_spans(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its responses (content + EOT)."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = formats.render_chat(messages[:i], add_generation_prompt=True)
        full = formats.render_chat(messages[: i + 1])
        if not full.startswith(prompt + message["content"] + TRAINED_SUFFIX):
            raise UserError("the chat template did not render the response where expected")
        spans.append((len(prompt), len(prompt) + len(message["content"]) + len(TRAINED_SUFFIX)))
    return formats.render_chat(messages), spans


def instruct_encoder(tokenizer) -> Callable[[list[str]], list]:
    """Documents (JSON message lists) -> (token ids, loss mask) with responses unmasked."""
    backend = tokenizer.backend_tokenizer

    def encode(documents: list[str]):
        rendered = [trained_spans(json.loads(d)) for d in documents]
        encodings = backend.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        out = []
        for (_, spans), encoding in zip(rendered, encodings):
            mask = [int(any(a <= start and end <= b for a, b in spans)) for start, end in encoding.offsets]
            out.append((encoding.ids, mask))
        return out

    return encode


# --- instruction pairs from a corpus -------------------------------------------------------------


def _summary(docstring: str) -> str:
    return " ".join(docstring.strip().split("\n\n")[0].split())


def function_pairs(source: str, min_doc_chars: int = 20, max_lines: int = 60) -> Iterator[dict]:
    """(instruction, output) pairs from the documented functions of Python source: the
    docstring's first paragraph asks for the function; the function without its docstring
    answers."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return
    lines = re.split(r"\r\n|\r|\n", source)  # the lines `ast` counts (str.splitlines also splits at form feeds)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc or len(_summary(doc)) < min_doc_chars or len(node.body) < 2:
            continue
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        if node.end_lineno - first + 1 > max_lines:
            continue
        doc_node = node.body[0]
        kept = lines[first - 1 : doc_node.lineno - 1] + lines[doc_node.end_lineno : node.end_lineno]
        code = textwrap.dedent("\n".join(kept)).strip("\n")
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        signature = f"{node.name}({ast.unparse(node.args)}){returns}"
        yield {
            "instruction": f"Write a Python function `{signature}`: {_summary(doc)}",
            "output": f"```python\n{code}\n```",
        }


def make_pairs(texts: Iterator[str], max_pairs: int) -> Iterator[dict]:
    """Distinct pairs from corpus samples, in corpus order, up to `max_pairs`."""
    seen: set[bytes] = set()
    count = 0
    for text in texts:
        for pair in function_pairs(text):
            digest = hashlib.blake2b(pair["output"].encode(), digest_size=16).digest()
            if digest in seen:
                continue
            seen.add(digest)
            yield pair
            count += 1
            if count >= max_pairs:
                return
