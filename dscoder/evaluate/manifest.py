"""What a results folder's run.json records so that its scores can be reproduced and compared:
the parts that decide the scores (benchmark, model, prompt template, generation settings, stop
sequences, post-processing, execution limits and isolation: `execute._identity`), and the parts
that only describe the run (software, machine, start and end).

Published pass@k is often impossible to reproduce because these are not written down: an instruct
model scored with base prompts, stop strings that cut answers, other max tokens. `dscoder eval
report` sets two runs' records side by side; `dscoder eval rerun` repeats one.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from dscoder import formats

SAMPLED_BYTES = 1 << 20  # of each weights file, the first and last this many are hashed


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def software() -> dict:
    """dscoder's version and git commit (when run from a checkout), Python and the libraries
    that generate."""
    import dscoder

    info = {"dscoder": dscoder.__version__, "python": platform.python_version()}
    root = Path(dscoder.__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            info["commit"] = commit + ("+changes" if dirty else "") if commit else None
        except (OSError, subprocess.SubprocessError):
            pass
    for name in ("torch", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def machine() -> dict:
    info = {"system": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def model_fingerprint(folder: Path) -> str:
    """A hash of a model folder: its small files whole (config, tokenizer, quantization), and of
    each weights file its size and first and last megabyte (a full hash of many gigabytes would
    take minutes; a changed checkpoint changes these)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 2 * SAMPLED_BYTES:
                digest.update(f.read())
            else:
                digest.update(f.read(SAMPLED_BYTES))
                f.seek(size - SAMPLED_BYTES)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def prompt_template(fmt: str, chat: bool, cot: bool = False) -> dict:
    """The exact template a task's prompt is made with (`fmt`: the tasks' own format)."""
    from dscoder.infer import prompts

    if chat:
        turn = {"mbpp": prompts.MBPP_INSTRUCT, "leetcode": "{prompt_sft}" + (prompts.LEETCODE_COT if cot else "")}.get(
            fmt, prompts.HUMANEVAL_INSTRUCT
        )
        return {"kind": "instruct", "user_turn": turn, "chat_template": formats.chat_template()}
    if fmt in ("humaneval-infilling", "ds-1000"):
        return {"kind": "base", "text": "{prompt}", "insertion": formats.fim_prompt("{prefix}", "{suffix}")}
    return {"kind": "base", "text": "{prompt}"}


def generation_source(
    model: str,
    fingerprint: str | None,
    settings: dict,
    fmt: str,
    chat: bool,
    tasks,
    postprocessing: list[str],
    api_base: str | None = None,
) -> dict:
    """run.json's `source` for samples generated in this run: every choice that decides them."""
    stops = sorted({s for t in tasks for s in t.stop}) if not chat else ["<|EOT|> (the instruct model's end of turn)"]
    fmt = tasks[0].format if tasks else fmt  # a suite's tasks share their format's template
    source = {
        "model": model,
        "generation": settings,
        "prompt": prompt_template(fmt, chat, settings.get("cot", False)),
        "stop": stops,
        "max_new_tokens": settings.get("max_new_tokens"),
        "postprocessing": postprocessing,
    }
    if fingerprint:
        source["fingerprint"] = fingerprint
    if api_base:
        source["api_base"] = api_base
    return source
