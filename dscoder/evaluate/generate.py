"""Samples from a model for a benchmark: each task's prompt (FIM for insertion tasks) continued
with the engine, cut at the task's stop sequences, written as `{task_id, completion_id,
completion}` rows. Resumable: rows already in the file are kept and not generated again."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from dscoder import formats
from dscoder.evaluate.benchmarks import Task, clean_completion


@dataclass(frozen=True)
class GenerateConfig:
    """How samples are drawn."""

    n: int = 1
    """Samples per task."""
    temperature: float = 0.0
    """0: greedy (the published pass@1 setting)."""
    top_p: float = 0.95
    """Nucleus mass when sampling."""
    max_new_tokens: int = 512
    """Most tokens per sample."""
    batch_size: int = 8
    """Sequences generated together."""
    seed: int = 0
    """Sample j of a task uses seed + j."""


def prompt_text(task: Task) -> str:
    return formats.fim_prompt(task.prompt, task.suffix) if task.suffix is not None else task.prompt


def generate(engine, task_list: list[Task], out: Path, cfg: GenerateConfig, limit: int | None = None) -> int:
    """Append missing samples to `out`; returns how many were written."""
    from tqdm import tqdm

    from dscoder.infer.engine import Sequence
    from dscoder.infer.sampling import SamplingParams

    done = set()
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done.add((str(row["task_id"]), int(row["completion_id"])))
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [(t, j) for t in task_list[:limit] for j in range(cfg.n) if (t.task_id, j) not in done]
    written = 0
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="generating", unit=" samples",
                                                     file=sys.stderr) as bar:
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            sequences = []
            for task, j in chunk:
                ids = engine.encode(prompt_text(task))
                room = engine.context - len(ids)
                params = SamplingParams(max_new_tokens=max(1, min(cfg.max_new_tokens, room - 1)), temperature=cfg.temperature,
                                        top_p=cfg.top_p, seed=cfg.seed + j, stop=task.stop)
                sequences.append(Sequence(ids[-(engine.context - 2):], params))
            engine.generate(sequences)
            for (task, j), s in zip(chunk, sequences):
                completion = task.completion_from(clean_completion(task, s.text))
                f.write(json.dumps({"task_id": task.task_id, "completion_id": j, "completion": completion}) + "\n")
                written += 1
            f.flush()
            bar.update(len(chunk))
    return written
