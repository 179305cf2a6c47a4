"""`dscoder quickstart` (what `make demo` runs): the whole DeepSeek-Coder pipeline on this
machine's own Python code, end to end, with a report.

Stages (each keeps its artifacts under the output folder and is skipped when run again):
1. corpus: `data build` over the installed Python packages (standard library, then the
   environment's packages, up to a size), a few whole packages held out for evaluation;
2. tokenizer: byte-level BPE learned on the corpus;
3. pretrain: the `tiny` preset with FIM (rate 0.5, line-level holes), and a no-FIM control on
   the same budget;
4. extend: the FIM model at 4x the context with linear RoPE scaling;
5. instruct: tuned on instruction pairs made from the corpus (`make-instruct`);
6. evaluate: held-out loss, single-line FIM exact match, completion parse rate and pass@1 for
   the untrained, no-FIM, FIM and instruct models;
7. show: completion, insertion, repository-level completion, chat, and a server request;
then `report.md`, `report.json` and plots.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from dscoder import artifacts
from dscoder.artifacts import run_stage
from dscoder.config import AT_LEAST_ONE, Range, Seed
from dscoder.data.installed import repositories
from dscoder.errors import UserError
from dscoder.train.plan import speed_probe, train_overrides

log = logging.getLogger("dscoder")

MIN_FREE_BYTES = 3 * 2**30


@dataclass(frozen=True)
class QuickstartConfig:
    """The demo's knobs."""

    minutes: Annotated[float, Range(0, 10080, low_open=True)] = 10.0
    """Pretraining budget, for the FIM model and again for the no-FIM control."""
    corpus_mb: Annotated[int, AT_LEAST_ONE] = 40
    """Megabytes of installed Python code to read."""
    vocab_size: int = 8000
    seq_len: int = 512
    batch_size: int = 4
    fim_max_chars: int = 1000
    """FIM pieces of about a training sequence (see FIMConfig.max_chars)."""
    fim_split: str = "line"
    """Where holes start and end (see FIMConfig.split): at this budget, line-level holes teach the
    tiny model to fill whole lines; DeepSeek-Coder's character-level holes ("char") teach it to
    continue inside a word."""
    fim_fit_windows: bool = True
    """Cut FIM pieces to fit the training window they start in (see FIMConfig.fit_windows): laid
    end to end, six pieces in ten cross a window boundary and lose their prefix or middle."""
    fim_lines: int = 400
    """Code lines of the held-out packages filled in for FIM exact match and edit similarity."""
    parse_prompts: int = 200
    """At most this many held-out function and method headers are completed for the share of
    completions that parse."""
    seed: Seed = 0


def run(
    out: Path, cfg: QuickstartConfig, model: Path | None = None, force: bool = False, quantize: int | None = None
) -> dict:
    """Run (or resume) the quickstart into `out`; returns report.json's content. `quantize`
    (bits) applies to a given `model` as it loads."""
    from dscoder.config import apply_overrides
    from dscoder.data.build import build
    from dscoder.data.steps import BuildConfig
    from dscoder.quickstart import report

    if model is not None and not (model / "config.json").is_file():
        raise UserError(f"{model}: not a model folder (no config.json)")
    if quantize is not None and model is None:
        raise UserError("--quantize: only with --model (the models the quickstart trains are evaluated as trained)")
    if cfg.minutes <= 0 or cfg.corpus_mb <= 0:
        raise UserError(f"--minutes ({cfg.minutes}) and --corpus-mb ({cfg.corpus_mb}) must be positive")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    # A folder holds one kind of run: the models trained here, or one given model evaluated
    # (stage "heldout" only: no training corpus, no tokenizer, another report)
    stage, other = ("corpus", "heldout") if model is None else ("heldout", "corpus")
    if not force and (out / "stages" / f"{other}.json").is_file():
        made = "evaluating a given --model" if model is None else "training the demo's models"
        raise UserError(f"--out {out}: made by {made}; give another --out, or --force to start over")
    if force and out.exists():
        artifacts.check_replaceable(out)
        shutil.rmtree(out)
    artifacts.make_output_folder(out)
    if shutil.disk_usage(out).free < MIN_FREE_BYTES:
        raise UserError(f"{out}: only {shutil.disk_usage(out).free / 2**30:.1f} GiB free; the demo needs about 3 GiB")
    seconds: dict[str, float] = {}

    def corpus_stage():
        train, held = repositories(cfg.corpus_mb * 1_000_000)
        data_cfg = apply_overrides(BuildConfig(), {"order.max_sample_chars": "400000"})
        build(out / "heldout", held, [], [], data_cfg, force=True)
        if model is not None:  # a given model is only evaluated: no training corpus
            return {"held_out": [p.name for p in held]}
        build(out / "corpus", train, [], [], data_cfg, force=True)
        return {"train_repositories": [p.name for p in train], "held_out": [p.name for p in held]}

    corpus = run_stage(out, stage, corpus_stage, seconds)
    heldout_files = _heldout_files(out / "heldout")

    models: dict[str, Path] = {}
    if model is None:
        models = _train_all(out, cfg, seconds)
    else:
        models["given"] = model

    results = run_stage(
        out,
        "evaluate",
        lambda: _evaluate(out, cfg, models, heldout_files, quantize),
        seconds,
        force_rerun=model is not None,
    )
    examples = run_stage(out, "show", lambda: _show(models, quantize), seconds, force_rerun=model is not None)
    seconds["total"] = round(sum(seconds.values()), 1)
    data = {
        "config": asdict(cfg),
        "corpus": corpus,
        "models": {k: str(v) for k, v in models.items()},
        **{k: v for k, v in results.items() if k != "seconds"},
        "examples": examples.get("examples", {}),
        "seconds": seconds,
    }
    report.write(out, data)
    return data


def _heldout_files(folder: Path) -> list[str]:
    """The held-out Python files, one text each, taken out of their repository samples."""
    from dscoder.data import corpus

    return [text for _, _, text in corpus.files(folder)]


def _train_all(out: Path, cfg: QuickstartConfig, seconds: dict) -> dict[str, Path]:
    from dscoder import config as config_lib
    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.data import corpus as corpus_lib
    from dscoder.train.instruct import make_pairs
    from dscoder.train.recipes import extend, instruct, pretrain
    from dscoder.train.settings import resolve

    corpus = out / "corpus"

    def tokenizer_stage():
        texts = []
        for text in corpus_lib.iter_texts(corpus):
            texts.append(text)
            if sum(map(len, texts)) > 20_000_000:
                break
        tokenizer_lib.save(tokenizer_lib.train(texts, cfg.vocab_size, length=len(texts)), out / "tokenizer")
        return {"vocab_size": cfg.vocab_size}

    run_stage(out, "tokenizer", tokenizer_stage, seconds)
    tokenizer = out / "tokenizer"

    def untrained_stage():
        tok = tokenizer_lib.load(tokenizer)
        hf_cfg = model_lib.hf_config(
            config_lib.apply_overrides(model_lib.get_preset("tiny").config, {"dtype": "float32"}), tok
        )
        shutil.rmtree(out / "untrained", ignore_errors=True)
        (out / "untrained").mkdir()
        model_lib.save(out / "untrained", hf_cfg, tokenizer, model_lib.build(hf_cfg, seed=cfg.seed))

    run_stage(out, "untrained", untrained_stage, seconds)
    steps = run_stage(
        out,
        "plan",
        lambda: {"steps": max(20, int(cfg.minutes * 60 / speed_probe(cfg, corpus, tokenizer, out)))},
        seconds,
    )["steps"]
    log.info("pretraining about %d steps per model (about %.1f minutes each)", steps, cfg.minutes)
    # The FIM model trains for the budget: its plan follows the measured speed, so load during the
    # probe or the run changes the step count, not the time. The control then takes as many steps.
    overrides = train_overrides(cfg, corpus, steps, 0.5) | {"loop.budget_minutes": str(cfg.minutes)}
    steps = run_stage(
        out,
        "pretrain-fim",
        lambda: pretrain(
            out / "pretrain-fim", resolve("pretrain", None, overrides), tokenizer, "tiny", None, resume=True
        ),
        seconds,
    )["step"]
    overrides = train_overrides(cfg, corpus, steps, 0.0) | {"loop.max_minutes": str(cfg.minutes * 1.25)}
    run_stage(
        out,
        "pretrain-no_fim",
        lambda: pretrain(
            out / "pretrain-no_fim", resolve("pretrain", None, overrides), tokenizer, "tiny", None, resume=True
        ),
        seconds,
    )

    extend_steps = max(10, steps // 10)
    extend_overrides = train_overrides(cfg, corpus, extend_steps, 0.5) | {
        "data.seq_len": str(cfg.seq_len * 4),
        "loop.batch_size": "1",
        "fim.max_chars": str(cfg.fim_max_chars * 4),
        "extend.rope_factor": "4",
        "extend.max_position_embeddings": str(1024 * 4),
        "optim.lr": "3e-4",
    }
    run_stage(
        out,
        "extend",
        lambda: extend(
            out / "extend", resolve("extend", None, extend_overrides), out / "pretrain-fim" / "final", resume=True
        ),
        seconds,
    )

    def instruct_stage():
        pairs = out / "instruct-pairs.jsonl"
        with artifacts.output_file(pairs, force=True) as f:
            for pair in make_pairs(corpus_lib.iter_texts(corpus), 4000):
                f.write(json.dumps(pair) + "\n")
        overrides = train_overrides(cfg, corpus, max(20, steps // 6), 0.0) | {
            "data.seq_len": str(cfg.seq_len),
            "loop.batch_size": str(cfg.batch_size),
            "optim.lr": "5e-4",
            "optim.warmup_steps": "5",
        }
        overrides.pop("data.sources")
        instruct(out / "instruct", resolve("instruct", None, overrides), out / "extend" / "final", pairs, resume=True)

    run_stage(out, "instruct", instruct_stage, seconds)
    return {
        "untrained": out / "untrained",
        "no_fim": out / "pretrain-no_fim" / "final",
        "fim": out / "pretrain-fim" / "final",
        "instruct": out / "instruct" / "final",
    }


def _evaluate(
    out: Path, cfg: QuickstartConfig, models: dict[str, Path], heldout_files: list[str], quantize: int | None = None
) -> dict:
    from dscoder.evaluate import heldout as measure
    from dscoder.infer.engine import Engine
    from dscoder.quickstart import report

    cases = measure.fim_cases(
        heldout_files, cfg.fim_lines, cfg.seed, prefix_chars=cfg.fim_max_chars // 2, suffix_chars=cfg.fim_max_chars // 4
    )
    prompts = measure.function_prompts(heldout_files, cfg.parse_prompts, cfg.seed)
    texts = heldout_files[:200]
    results: dict[str, dict] = {key: {} for key, _, _ in report.FIGURES}
    for name, folder in models.items():
        log.info("evaluating %s", name)
        # The models trained here are tiny: 32 rows decode together (a given model keeps the default)
        engine = Engine.load(folder, dtype="float32", quantize=quantize, rows=None if name == "given" else 32)
        loss = measure.heldout_loss(engine, texts, cfg.seq_len)
        results["heldout_loss"][name] = loss
        results["heldout_perplexity"][name] = math.exp(loss)
        infills = measure.fim_infills(engine, cases)
        results["fim_line_exact_match"][name] = measure.exact_match(infills, cases)
        results["fim_line_edit_similarity"][name] = measure.edit_similarity(infills, cases)
        results["fim_line_loss"][name] = measure.fim_line_loss(engine, cases)
        results["fim_line_loss_prefix_only"][name] = measure.fim_line_loss(engine, cases, with_suffix=False)
        results["completion_parse_rate"][name] = measure.completion_parse_rate(engine, prompts)
        shutil.rmtree(out / "eval" / name, ignore_errors=True)
        results["pass@1"][name] = measure.pass_at_1(engine, out / "eval" / name)
    results["eval_sizes"] = {"fim_lines": len(cases), "parse_prompts": len(prompts), "problems": 20}
    return results


def _show(models: dict[str, Path], quantize: int | None = None) -> dict:
    """Each way of using the model once, on fixed examples."""
    from importlib import resources

    from dscoder.infer import prompts, repo_context
    from dscoder.infer.engine import Engine, Sequence
    from dscoder.infer.sampling import SamplingParams

    base = models.get("fim") or models.get("given")
    chat_model = models.get("instruct") or base
    engine = Engine.load(base, quantize=quantize)
    params = SamplingParams(max_new_tokens=48, stop=("\n\n\n",))

    def answer(prompt) -> dict:
        (s,) = engine.generate([Sequence(prompt.ids, params)])
        return {"prompt": prompt.text, "output": s.text}

    repo = Path(str(resources.files("dscoder.quickstart").joinpath("example_repo")))
    examples = {
        "completion": answer(
            prompts.completion(engine, 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', 48)
        ),
        "insertion": answer(
            prompts.insertion(engine, "def average(values):\n    total = sum(values)\n", "    return result\n", 48)
        ),
        "repository": answer(repo_context.build(engine, repo, "main.py", None, None, 48)),
    }
    chat_engine = engine if chat_model == base else Engine.load(chat_model, quantize=quantize)
    message = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    (s,) = chat_engine.generate(
        [Sequence(prompts.chat(chat_engine, message, 64).ids, SamplingParams(max_new_tokens=64))]
    )
    examples["chat"] = {"prompt": message[0]["content"], "output": s.text}
    try:
        examples["server"] = _server_request(engine)
    except UserError as exc:  # no serve extra: the other examples stand, the report says why
        log.warning("server example skipped: %s", exc)
        examples["server"] = {"prompt": "", "output": f"skipped: {exc}"}
    return {"examples": examples}


def _server_request(engine) -> dict:
    """Start the OpenAI-compatible server on a free port and ask it for one completion."""
    import socket
    import threading

    from dscoder.infer.server import create_app, require_serve_stack

    uvicorn = require_serve_stack()
    try:
        import httpx
    except ImportError as exc:
        raise UserError(f"the server example needs httpx ({exc}): pip install 'dscoder[serve]'") from None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    body = {
        "model": engine.name,
        "prompt": "import os\n\n\ndef list_python_files(folder):\n",
        "max_tokens": 32,
        "temperature": 0,
    }
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120).json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {
        "request": f"POST http://127.0.0.1:{port}/v1/completions",
        "prompt": body["prompt"],
        "output": response["choices"][0]["text"],
    }
