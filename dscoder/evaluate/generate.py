"""Samples from a model for a benchmark: each task's prompt (FIM for insertion tasks) continued
with the engine, cut at the task's stop sequences, written as `{task_id, completion_id,
completion, model, settings}` rows (`model` and `settings` say which model and generation
settings made the row). Resumable: rows already in the file are kept and not generated again;
a file with rows of another model, settings or benchmark is refused unless `force`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from dscoder import artifacts, formats
from dscoder.config import AT_LEAST_ONE, Seed
from dscoder.errors import UserError
from dscoder.evaluate.benchmarks import Task, clean_completion
from dscoder.infer.sampling import NewTokens, Temperature, TopP


@dataclass(frozen=True)
class GenerateConfig:
    """How samples are drawn."""

    n: Annotated[int, AT_LEAST_ONE] = 1
    """Samples per task."""
    temperature: Temperature = 0.0
    """0: greedy (the published pass@1 setting)."""
    top_p: TopP = 0.95
    """Nucleus mass when sampling."""
    max_new_tokens: NewTokens = 512
    """Most tokens per sample."""
    batch_size: Annotated[int, AT_LEAST_ONE] = 8
    """Sequences generated together."""
    seed: Seed = 0
    """Sample j of a task uses seed + j."""
    quantize: Literal["none", "int8", "int4"] = "none"
    """Weights quantized as the model loads (`--quantize`)."""


def prompt_text(task: Task) -> str:
    return formats.fim_prompt(task.prompt, task.suffix) if task.suffix is not None else task.prompt


def task_prompt(engine, task: Task, max_new_tokens: int) -> tuple[list[int], int]:
    """A task's prompt ids and its new-token limit: the whole prompt with as many new tokens as
    fit (up to `max_new_tokens`); a prompt too long for that is fitted by the prompt layer (the
    text nearest the hole or the end kept, BOS and FIM tokens always) with a quarter of the
    context left for the answer."""
    from dscoder.infer import prompts

    ids = engine.encode(prompt_text(task))
    if len(ids) < engine.context - 1:
        return ids, max(1, min(max_new_tokens, engine.context - len(ids) - 1))
    new_tokens = min(max_new_tokens, engine.context // 4)
    if task.suffix is not None:
        return prompts.insertion(engine, task.prompt, task.suffix, new_tokens).ids, new_tokens
    return prompts.completion(engine, task.prompt, new_tokens).ids, new_tokens


def settings(cfg: GenerateConfig) -> dict:
    """The settings that decide a sample's text (sample j of a task does not depend on n, the
    batch size or how many tasks are generated)."""
    chosen = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    return chosen if cfg.quantize == "none" else {**chosen, "quantize": cfg.quantize}


def origin(model: Path, benchmark_sha: str, cfg: GenerateConfig) -> dict:
    """What each row records of how it was made."""
    key = json.dumps({"benchmark": benchmark_sha, **settings(cfg)}, sort_keys=True)
    return {"model": str(Path(model).resolve()), "settings": hashlib.sha256(key.encode()).hexdigest()[:16]}


def _read(out: Path, made_by: dict) -> tuple[list[str], dict | None]:
    """The lines of `out` made the way `made_by` says (a line cut short by a crash is left out)
    and the first row made another way, if any."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a samples file (JSON lines)")
    if not out.is_file():
        return [], None
    kept, other = [], None
    for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            str(row["task_id"]), int(row["completion_id"])
        except (json.JSONDecodeError, KeyError, ValueError, TypeError):
            continue
        if {k: row.get(k) for k in made_by} == made_by:
            kept.append(line)
        elif other is None:
            other = row
    return kept, other


def check_file(out: Path, made_by: dict, force: bool) -> None:
    """A UserError when `out` holds samples made by another model or settings (unless `force`);
    writes nothing."""
    _, other = _read(out, made_by)
    if other is not None and not force:
        how = (f"of model {other.get('model')}" if other.get("model") != made_by.get("model")
               else "made with other settings or another benchmark") if other.get("model") else "made elsewhere"
        raise UserError(f"{out} holds samples {how}; use --force to replace them, or another --out")


def generate(engine, task_list: list[Task], out: Path, cfg: GenerateConfig, limit: int | None = None,
             made_by: dict | None = None, force: bool = False) -> int:
    """Append missing samples to `out`; returns how many were written. `made_by` (from `origin`)
    is recorded in each row and decides which rows already there can be kept."""
    from dscoder.console import progress
    from dscoder.infer.engine import Sequence
    from dscoder.infer.sampling import SamplingParams

    made_by = made_by or {}
    check_file(out, made_by, force)
    kept, _ = _read(out, made_by)
    if out.exists():  # only whole rows of this model and settings are kept
        artifacts.write_text(out, "".join(line + "\n" for line in kept))
    done = {(str(row["task_id"]), int(row["completion_id"])) for row in map(json.loads, kept)}
    artifacts.make_folder(out.parent)
    todo = [(t, j) for t in task_list[:limit] for j in range(cfg.n) if (t.task_id, j) not in done]
    written = 0
    with open(out, "a", encoding="utf-8") as f, progress(total=len(todo), desc="generating", unit=" samples") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            sequences = []
            for task, j in chunk:
                ids, new_tokens = task_prompt(engine, task, cfg.max_new_tokens)
                params = SamplingParams(max_new_tokens=new_tokens, temperature=cfg.temperature,
                                        top_p=cfg.top_p, seed=cfg.seed + j, stop=task.stop)
                sequences.append(Sequence(ids, params))
            engine.generate(sequences)
            for (task, j), s in zip(chunk, sequences):
                completion = task.completion_from(clean_completion(task, s.text))
                f.write(json.dumps({"task_id": task.task_id, "completion_id": j, "completion": completion, **made_by}) + "\n")
                written += 1
            f.flush()
            bar.update(len(chunk))
    return written
