"""Samples from a model for a benchmark: each task's prompt (FIM for insertion tasks; with `chat`,
the DeepSeek instruct evaluation turn) continued by the local engine or by an OpenAI-compatible
server, post-processed (cut at the task's stop sequences; for chat, the answer's code as the
released scripts take it: benchmarks.instruct_completion), and
written as `{task_id, completion_id, completion, raw, model, settings}` rows (`raw` is the
generation as the model gave it; `model` and `settings` say which model and generation settings
made the row). Resumable: rows already in the file are kept and not generated again; a file with
rows of another model, settings or benchmark is refused unless `force`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

from dscoder import artifacts
from dscoder.config import AT_LEAST_ONE, Seed
from dscoder.errors import UserError
from dscoder.evaluate.benchmarks import Task, clean_completion, code_block, instruct_completion
from dscoder.infer.sampling import NewTokens, Temperature, TopP

log = logging.getLogger("dscoder")


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
    """Most tokens per sample (the CLI's default is the released scripts' figure for the
    benchmark: `benchmarks.new_tokens`)."""
    batch_size: Annotated[int, AT_LEAST_ONE] = 8
    """Sequences generated together."""
    seed: Seed = 0
    """Sample j of a task uses seed + j."""
    quantize: Literal["none", "int8", "int4"] = "none"
    """Weights quantized as the model loads (`--quantize`)."""
    chat: bool = False
    """Instruct models: the DeepSeek instruct evaluation turn through the chat template, and the
    answer's code as the released scripts take it (HumanEval in eight languages, MBPP, LeetCode)."""
    cot: bool = False
    """With `chat` on LeetCode Contest: the released chain-of-thought line is appended."""
    concurrency: Annotated[int, AT_LEAST_ONE] = 8
    """Requests in flight at once, sampling through an API."""


def settings(cfg: GenerateConfig) -> dict:
    """The settings that decide a sample's text (sample j of a task does not depend on n, the
    batch size, the concurrency or how many tasks are generated)."""
    chosen = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
    }
    if cfg.quantize != "none":
        chosen["quantize"] = cfg.quantize
    if cfg.cot:
        chosen["cot"] = True
    return chosen | {"chat": True} if cfg.chat else chosen


def origin(model: Path | str, benchmark_sha: str, cfg: GenerateConfig) -> dict:
    """What each row records of how it was made (`model`: a folder, or an endpoint and model
    name)."""
    key = json.dumps({"benchmark": benchmark_sha, **settings(cfg)}, sort_keys=True)
    name = model if isinstance(model, str) else str(Path(model).resolve())
    made_by = {"model": name, "settings": hashlib.sha256(key.encode()).hexdigest()[:16]}
    return made_by | {"chat": True} if cfg.chat else made_by  # rows of instruct answers say so


def postprocess(task: Task, raw: str, chat: bool) -> str:
    """The sample's completion from the model's raw text (the steps run.json names)."""
    return instruct_completion(task, raw) if chat else task.completion_from(clean_completion(task, raw))


POSTPROCESSING = {
    False: ["cut at the task's stop sequences", "as a completion of the benchmark's own prompt"],
    True: [
        "the answer's code as DeepSeek-Coder's released evaluation scripts extract it "
        "(extract_generation_code, extract_python_code)",
        "run with the released harness's imports",
    ],
}


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
        how = (
            (
                f"of model {other.get('model')}"
                if other.get("model") != made_by.get("model")
                else "made with other settings or another benchmark"
            )
            if other.get("model")
            else "made elsewhere"
        )
        raise UserError(f"{out} holds samples {how}; use --force to replace them, or another --out")


Emit = Callable[[Task, int, str], None]


def local_sampler(engine, cfg: GenerateConfig) -> Callable[[list[tuple[Task, int]], Emit], None]:
    """Samples from the local engine, `cfg.batch_size` sequences at a time."""
    from dscoder.infer import prompts
    from dscoder.infer.engine import Sequence, is_instruct
    from dscoder.infer.sampling import SamplingParams

    if cfg.chat and not is_instruct(engine.tokenizer):
        log.warning(
            "--chat with %s, whose tokenizer does not end turns with <|EOT|>: a base model is scored without --chat",
            engine.name,
        )

    def sample(todo: list[tuple[Task, int]], emit: Emit) -> None:
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            sequences = []
            for task, j in chunk:
                prompt, new_tokens = prompts.task_prompt(
                    engine, task, cfg.max_new_tokens, instruct=cfg.chat, cot=cfg.cot
                )
                params = SamplingParams(
                    max_new_tokens=new_tokens,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    seed=cfg.seed + j,
                    stop=() if cfg.chat else task.stop,
                )
                sequences.append(Sequence(prompt.ids, params))
            engine.generate(sequences)
            for (task, j), s in zip(chunk, sequences):
                emit(task, j, s.text)

    return sample


def resolve_model(endpoint_args: dict) -> str:
    """The model name to ask the server for (checks that the server answers, takes the key and
    knows the model)."""
    from dscoder.infer.remote import Endpoint

    async def ask() -> str:
        endpoint = Endpoint(**endpoint_args)
        try:
            return await endpoint.resolve_model()
        finally:
            await endpoint.close()

    return asyncio.run(ask())


def api_sampler(endpoint_args: dict, cfg: GenerateConfig) -> Callable[[list[tuple[Task, int]], Emit], None]:
    """Samples through an OpenAI-compatible server (`endpoint_args` for remote.Endpoint),
    `cfg.concurrency` requests at a time: completions (insertion tasks with `suffix`, or as the
    rendered FIM prompt when the server refuses `suffix`), or chat completions with `cfg.chat`."""
    from dscoder.infer import prompts
    from dscoder.infer.remote import Endpoint, RemoteError

    async def run(todo: list[tuple[Task, int]], emit: Emit) -> None:
        endpoint = Endpoint(**endpoint_args)
        gate, rendered = asyncio.Semaphore(cfg.concurrency), {"fim": False}
        try:

            async def one(task: Task, j: int) -> None:
                async with gate:
                    common = {
                        "max_tokens": cfg.max_new_tokens,
                        "temperature": cfg.temperature,
                        "top_p": cfg.top_p,
                        "seed": cfg.seed + j,
                    }
                    try:
                        if cfg.chat:
                            reply = await endpoint.chat(prompts.instruct_messages(task, cfg.cot), **common)
                        elif task.suffix is not None and not rendered["fim"]:
                            try:
                                reply = await endpoint.complete(
                                    task.prompt, suffix=task.suffix, stop=task.stop, **common
                                )
                            except RemoteError as exc:
                                if exc.status != 400 or "suffix" not in str(exc).lower():
                                    raise
                                log.warning("%s refuses suffix: FIM prompts are rendered here", endpoint.base_url)
                                rendered["fim"] = True
                                reply = await endpoint.complete(prompts.task_text(task), stop=task.stop, **common)
                        else:
                            reply = await endpoint.complete(prompts.task_text(task), stop=task.stop, **common)
                    except RemoteError as exc:
                        raise RemoteError(f"task {task.task_id}: {exc}", exc.status) from None
                emit(task, j, reply.text)

            jobs = [asyncio.ensure_future(one(task, j)) for task, j in todo]
            try:
                await asyncio.gather(*jobs)
            finally:
                for job in jobs:
                    job.cancel()
        finally:
            await endpoint.close()

    return lambda todo, emit: asyncio.run(run(todo, emit))


def generate(
    sampler,
    task_list: list[Task],
    out: Path,
    cfg: GenerateConfig,
    limit: int | None = None,
    made_by: dict | None = None,
    force: bool = False,
) -> int:
    """Append missing samples to `out` from `sampler` (local_sampler or api_sampler); returns
    how many were written. `made_by` (from `origin`) is recorded in each row and decides which
    rows already there can be kept. Each row is written as it comes, so an interrupted run
    resumes where it stopped."""
    from dscoder.console import progress

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

        def emit(task: Task, j: int, raw: str) -> None:
            nonlocal written
            row = {
                "task_id": task.task_id,
                "completion_id": j,
                "completion": postprocess(task, raw, cfg.chat),
                "raw": raw,
                **made_by,
            }
            if cfg.chat and code_block(task, raw) is None:  # scored as it is, and counted in the summary
                row["no_code_block"] = True
            f.write(json.dumps(row) + "\n")
            f.flush()
            written += 1
            bar.update(1)

        sampler(todo, emit)
    return written
