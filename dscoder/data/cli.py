"""The `dscoder data` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dscoder.arguments import setting
from dscoder.data.steps import RunConfig


def cmd_data_build(args: argparse.Namespace) -> int:
    from dscoder import config
    from dscoder.data.build import build
    from dscoder.data.stats import report
    from dscoder.data.steps import BuildConfig

    cfg = config.load(BuildConfig(), args.config, config.parse_overrides(args.extra))
    if args.workers is not None:
        cfg = config.apply_overrides(cfg, {"run.workers": str(args.workers)})
    stats = build(
        args.out,
        args.sources,
        args.repos_in,
        args.decontaminate,
        cfg,
        engine=args.engine,
        ray_address=args.ray_address,
        force=args.force,
    )
    print(report(stats.to_json()))
    print(f"\ncorpus: {args.out}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from dscoder.data import stats

    data = stats.read(args.corpus)
    print(json.dumps(data, indent=2) if args.json else stats.report(data))
    return 0


def add_commands(groups) -> None:
    data = groups.add_parser("data", help="build a repository-level code corpus")
    data_cmds = data.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = data_cmds.add_parser(
        "build",
        help="collect, filter, order by dependencies, deduplicate, screen, decontaminate, redact",
        description="Build a corpus of repository-level samples. Each SRC is one repository (a folder, "
        "a git repository, a .tar/.tar.gz/.zip archive) or a dataset file (parquet/jsonl with "
        "repository, path and content columns). Any setting can be changed with "
        "--SECTION.KEY=VALUE (e.g. --dedup.threshold=0.8) or a TOML --config file; see docs/data.md. "
        "Run the same command again to resume an interrupted build.",
        example="dscoder data build --out runs/corpus --repos-in ~/src --decontaminate HumanEval.jsonl.gz --dedup.threshold=0.8",
    )
    p.add_argument("sources", nargs="*", type=Path, metavar="SRC", help="repository or dataset file")
    p.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    p.add_argument(
        "--repos-in",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="take every subfolder (and archive) of DIR as a repository (repeatable)",
    )
    p.add_argument(
        "--decontaminate",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="benchmark files (HumanEval, MBPP, MultiPL-E, HumanEval-X jsonl/jsonl.gz)",
    )
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local worker processes or Ray")
    p.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=setting(RunConfig, "workers"), help="worker processes (default: one per CPU core)")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML file with [collect], [filters], [quality], [decontam], [pii], [order], [dedup] and [run] sections",
    )
    p.add_argument("--force", action="store_true", help="discard what --out holds and build again")
    p.set_defaults(func=cmd_data_build, overrides=True)

    p = data_cmds.add_parser(
        "stats",
        help="what a corpus build kept and dropped, per step, rule and language",
        description="What a corpus build kept and dropped, per step, rule and language.",
        example="dscoder data stats runs/corpus",
    )
    p.add_argument("corpus", type=Path, metavar="DIR", help="corpus folder")
    p.add_argument("--json", action="store_true", help="print stats.json as it is")
    p.set_defaults(func=cmd_data_stats)
