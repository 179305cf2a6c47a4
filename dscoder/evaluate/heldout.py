"""Measures of a model on held-out code, shared by the quickstart, the experiments and `adapt`:
held-out loss, single-line FIM exact match and edit similarity, the share of completions that
parse, and pass@1 on the project's own small problems (problems.jsonl, written for dscoder, not
taken from a benchmark)."""

from __future__ import annotations

import ast
import io
import math
import random
import tokenize
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from dscoder.evaluate import metrics
from dscoder.infer import prompts
from dscoder.infer.engine import Engine, Sequence
from dscoder.infer.sampling import SamplingParams

FUNCTION_STOPS = ("\ndef ", "\nclass ", "\n\n\n", "\nif __name__", "\n@")


def heldout_windows(engine: Engine, texts: list[str], seq_len: int, max_windows: int = 64) -> list[list[int]]:
    """The first windows of `seq_len` + 1 tokens of the held-out texts joined with EOS (each
    window's last token is the previous one's first target)."""
    ids: list[int] = []
    for text in texts:
        ids += engine.encode(text) + [engine.tokenizer.eos_token_id]
        if len(ids) > (seq_len + 1) * max_windows:
            break
    return [ids[i : i + seq_len + 1] for i in range(0, len(ids) - seq_len - 1, seq_len)][:max_windows]


def window_losses(engine: Engine, texts: list[str], seq_len: int, max_windows: int = 64) -> np.ndarray:
    """Next-token loss (nats per token) of each of the first windows of `seq_len` tokens of
    the held-out texts, no FIM. (W,)"""
    windows = heldout_windows(engine, texts, seq_len, max_windows)
    return (
        np.concatenate(
            [position_losses(engine, windows[start : start + 8]).mean(axis=1) for start in range(0, len(windows), 8)]
        )
        if windows
        else np.empty(0)
    )


def position_losses(engine: Engine, windows: list[list[int]]) -> np.ndarray:
    """The loss of every next token of equal-length windows, by position. (W, T-1)"""
    with torch.inference_mode():
        batch = torch.tensor(windows, device=engine.device)
        logits = engine.model(input_ids=batch[:, :-1]).logits.float()
        # one row per token: the loss over (W, V, T) strided logits takes six times as long
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    return loss.view(len(windows), -1).cpu().numpy()


def heldout_loss(engine: Engine, texts: list[str], seq_len: int, max_windows: int = 64) -> float:
    """Mean next-token loss (nats) over the first windows of the held-out texts, no FIM."""
    losses = window_losses(engine, texts, seq_len, max_windows)
    return float(losses.mean()) if losses.size else math.nan


def code_lines(text: str) -> list[int]:
    """0-based numbers of the lines that start a statement or expression of code: not comments,
    not lines inside or opening strings and docstrings (a file that does not tokenize has none)."""
    first: dict[int, int] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER):
                continue
            if tok.type == tokenize.STRING and tok.start[0] != tok.end[0]:
                for row in range(tok.start[0], tok.end[0] + 1):
                    first[row] = tokenize.STRING
            first.setdefault(tok.start[0], tok.type)
    except (tokenize.TokenError, SyntaxError, ValueError):
        return []
    return [row - 1 for row, kind in sorted(first.items()) if kind not in (tokenize.STRING, tokenize.COMMENT)]


def fim_cases(
    files: list[str], count: int, seed: int, prefix_chars: int = 1200, suffix_chars: int = 400
) -> list[tuple[str, str, str]]:
    """(prefix, suffix, line) for random code lines of held-out files. As in HumanEval's
    single-line infilling, the hole is the whole line with its indentation: the prefix ends with
    the previous line's newline and the suffix starts with the next line. The windows hold whole
    lines only (at most `prefix_chars` before, `suffix_chars` after), as FIM training pieces
    and an editor's context do."""
    rng = random.Random(seed)
    candidates = []
    for f_index, text in enumerate(files):
        lines = text.split("\n")
        for i in code_lines(text):
            if 4 <= len(lines[i].strip()) <= 80:
                candidates.append((f_index, i))
    chosen = rng.sample(candidates, min(count, len(candidates)))
    cases = []
    for f_index, i in chosen:
        lines = files[f_index].split("\n")
        prefix = "".join(line + "\n" for line in lines[:i])
        suffix = "\n".join(lines[i + 1 :])
        if len(prefix) > prefix_chars:
            prefix = prefix[-prefix_chars:]
            prefix = prefix[prefix.find("\n") + 1 :]
        if len(suffix) > suffix_chars:
            suffix = suffix[:suffix_chars]
            suffix = suffix[: suffix.rfind("\n") + 1]
        cases.append((prefix, suffix, lines[i].rstrip()))
    return cases


def fim_infills(engine: Engine, cases: list[tuple[str, str, str]]) -> list[str]:
    """The first line each hole is filled with (greedy, PSM prompt), indentation included. All
    holes go to the engine at once: its rows are kept full (continuous batching)."""
    sequences = [
        Sequence(prompts.insertion(engine, p, s, 40).ids, SamplingParams(max_new_tokens=40, stop=("\n",)))
        for p, s, _ in cases
    ]
    engine.generate(sequences)
    return [seq.text.split("\n")[0].rstrip() for seq in sequences]


def exact_matches(infills: list[str], cases: list[tuple[str, str, str]]) -> np.ndarray:
    """1.0 for each hole filled with the real line (metrics.exact_match: equal once stripped),
    else 0.0. (N,)"""
    return np.array([float(metrics.exact_match(got, line)) for got, (_, _, line) in zip(infills, cases)])


def edit_similarities(infills: list[str], cases: list[tuple[str, str, str]]) -> np.ndarray:
    """Edit similarity (metrics.edit_similarity, 0 to 1) of each infill to the real line: the
    usual companion of exact match in line-completion studies, it credits near misses. (N,)"""
    return np.array([metrics.edit_similarity(got, line) for got, (_, _, line) in zip(infills, cases)])


def exact_match(infills: list[str], cases: list[tuple[str, str, str]]) -> float:
    """Share of holes filled with exactly the real line."""
    return float(exact_matches(infills, cases).mean()) if cases else 0.0


def edit_similarity(infills: list[str], cases: list[tuple[str, str, str]]) -> float:
    """Mean edit similarity of the infills to the real lines."""
    return float(edit_similarities(infills, cases).mean()) if cases else math.nan


def fim_line_losses(engine: Engine, cases: list[tuple[str, str, str]], with_suffix: bool = True) -> np.ndarray:
    """(nats, tokens) of each real hole line given its PSM prompt; with `with_suffix=False`,
    given the prefix alone as plain text. (N, 2)"""
    lengths: list[tuple[int, int]] = []  # (context, middle) tokens of each case
    rows: list[list[int]] = []
    for prefix, suffix, line in cases:
        middle = engine.tokenizer(line + "\n", add_special_tokens=False)["input_ids"]
        context = (
            prompts.insertion(engine, prefix, suffix, len(middle))
            if with_suffix
            else prompts.completion(engine, prefix, len(middle))
        ).ids
        rows.append(context + middle)
        lengths.append((len(context), len(middle)))
    # Cases of similar length run together, padded on the right (a causal model's hidden state at
    # a position never sees the padding after it); the head runs on the hole's positions only.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    losses = [0.0] * len(rows)
    pad = engine.tokenizer.eos_token_id
    decoder, head = engine.model.get_decoder(), engine.model.get_output_embeddings()
    with torch.inference_mode():
        for start in range(0, len(order), 16):
            chunk = order[start : start + 16]
            width = len(rows[chunk[-1]])
            ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in chunk], device=engine.device)
            hidden = decoder(input_ids=ids).last_hidden_state
            for k, i in enumerate(chunk):
                context, middle = lengths[i]
                logits = head(hidden[k, context - 1 : context + middle - 1]).float()
                losses[i] = float(
                    torch.nn.functional.cross_entropy(logits, ids[k, context : context + middle], reduction="sum")
                )
    return np.array([(loss, middle) for loss, (_, middle) in zip(losses, lengths)], dtype=np.float64).reshape(-1, 2)


def fim_line_loss(engine: Engine, cases: list[tuple[str, str, str]], with_suffix: bool = True) -> float:
    """Mean loss (nats per token) of the real hole lines given their PSM prompts; with
    `with_suffix=False`, given the prefix alone as plain text. Finer than exact match: the first shows
    how far a model has learned the FIM layout, the gap between the two how much it uses the code
    after the hole."""
    losses = fim_line_losses(engine, cases, with_suffix)
    return float(losses[:, 0].sum() / max(losses[:, 1].sum(), 1))


def function_prompts(files: list[str], count: int, seed: int) -> list[str]:
    """`def ...:` lines with their docstrings, taken from held-out files, as completion prompts:
    top-level functions and methods, a method moved out of its class (dedented to column 0) so
    that it parses on its own."""
    found = []
    for text in files:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.split("\n")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                prompt = _function_header(lines, node)
                if prompt and len(prompt) < 600:
                    found.append(prompt)
    random.Random(seed).shuffle(found)
    return found[:count]


def _function_header(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The `def` line(s) of `node` with its docstring, at column 0, ready for a body; None for a
    function whose body starts on its `def` line or whose lines do not all start with the
    `def`'s indentation."""
    first = node.body[0]
    if first.lineno == node.lineno:  # `def f(): ...`, a whole function already
        return None
    has_doc = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    body_start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))])
    chunk = lines[node.lineno - 1 : first.end_lineno if has_doc else body_start - 1]
    indent = lines[node.lineno - 1][: node.col_offset]
    if not all(line.startswith(indent) or not line.strip() for line in chunk):
        return None
    prompt = "\n".join(line[len(indent) :] for line in chunk) + "\n"
    body_indent = lines[first.lineno - 1][len(indent) :][: first.col_offset - node.col_offset]
    try:
        ast.parse(prompt + body_indent + "pass\n")
    except SyntaxError:
        return None
    return prompt


def parses(prompt: str, completion: str, finished: bool = False) -> bool:
    """Whether the prompt and the completion parse: a `finished` completion (ended by EOS or a
    stop sequence) as a whole, one cut off by the token limit up to its last complete line."""
    if finished:
        body = completion + "\n"
    else:
        body = completion[: completion.rfind("\n") + 1] if "\n" in completion else ""
    text = prompt + body
    if not body.strip():
        return False
    try:
        ast.parse(text)
        return True
    except (SyntaxError, ValueError, RecursionError):
        return False


def completion_parse_rate(engine: Engine, texts: list[str]) -> float:
    sequences = [
        Sequence(prompts.completion(engine, p, 96).ids, SamplingParams(max_new_tokens=96, stop=FUNCTION_STOPS))
        for p in texts
    ]
    engine.generate(sequences)
    ok = sum(parses(p, s.text, s.finish_reason == "stop") for p, s in zip(texts, sequences))
    return ok / max(len(texts), 1)


def problems_file() -> Path:
    return Path(str(resources.files("dscoder.evaluate").joinpath("problems.jsonl")))


def pass_at_1(engine: Engine, out: Path) -> float:
    """Greedy pass@1 on the quickstart problems, executed in the evaluation sandbox."""
    from dscoder.evaluate.benchmarks import tasks
    from dscoder.evaluate.execute import ExecConfig, execute, read_samples
    from dscoder.evaluate.generate import GenerateConfig, generate, local_sampler

    _, task_list = tasks(problems_file())
    samples = out / "samples.jsonl"
    cfg = GenerateConfig(max_new_tokens=96)
    generate(local_sampler(engine, cfg), task_list, samples, cfg)
    summary = execute(task_list, read_samples(samples), out, ExecConfig(timeout=5))
    return float(summary["overall"].get("pass@1", 0.0))
