"""The `dscoder experiment` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from dscoder.arguments import setting
from dscoder.experiment import extend, fim_rate, repo_level
from dscoder.experiment.common import ExperimentConfig

MODULES = {"fim-rate": fim_rate, "repo-level": repo_level, "extend": extend}

ABOUT = {
    "fim-rate": (
        "FIM rate 0 / 0.5 PSM / 1.0 PSM / 0.5 PSM+SPM: completion against infilling",
        "Train four variants on the same data and steps, score plain-text loss and FIM holes "
        "(loss, exact match, edit similarity) on held-out code, and say whether the paper's "
        "directions reproduce.",
    ),
    "repo-level": (
        "dependency-ordered repository samples vs random order vs one file per sample",
        "Train three variants on the same files and steps, score the loss of cross-file "
        "identifiers with the repository before each file, and a cross-file line completion "
        "task built from held-out repositories.",
    ),
    "extend": (
        "linear RoPE scaling x4: loss by position as is, scaled, and after `train extend`",
        "Pretrain at a quarter of --seq-len, then score at --seq-len as it is, with RoPE scaling "
        "x4 and no training, and after a short `train extend`; loss by position bucket.",
    ),
}


def cmd_experiment(args: argparse.Namespace) -> int:
    cfg = ExperimentConfig(minutes=args.minutes, seeds=args.seeds, preset=args.preset, seq_len=args.seq_len)
    data = MODULES[args.command].run(args.out, cfg, args.corpus)
    print()
    for e in data["expectations"]:
        print(f"{e['verdict']:48s} {e['expected']}")
    print(f"\nreport  {args.out / 'report.md'}  (figures in {args.out / 'report.json'})")
    return 0


def add_commands(groups) -> None:
    experiment = groups.add_parser("experiment", help="reproduce the paper's ablations at laptop scale")
    commands = experiment.add_subparsers(dest="command", metavar="EXPERIMENT", required=True)
    for name, (about, description) in ABOUT.items():
        minutes = MODULES[name].DEFAULT_MINUTES
        p = commands.add_parser(
            name,
            help=about,
            description=f"{description} Each variant trains for --minutes (default {minutes:g}), turned into a "
            "step count by a timed probe; finished stages are kept when the command is run again. Writes "
            "report.md, report.json and plots into --out.",
            example=f"dscoder experiment {name} --out runs/exp-{name} --minutes 2",
        )
        p.add_argument("--out", type=Path, required=True, help="experiment folder (resumed when run again)")
        p.add_argument(
            "--corpus",
            type=Path,
            help="a corpus built by `dscoder data build` (default: build one "
            "from the installed Python packages); a tenth of its repositories is held out",
        )
        p.add_argument(
            "--minutes",
            type=setting(ExperimentConfig, "minutes"),
            default=None,
            help=f"training minutes per variant (default {minutes:g}; at least 1)",
        )
        p.add_argument(
            "--seeds", type=setting(ExperimentConfig, "seeds"), default=1, help="seeds per variant (default 1)"
        )
        p.add_argument("--preset", default="tiny", help="model preset of every variant (default tiny)")
        p.add_argument(
            "--seq-len",
            type=setting(ExperimentConfig, "seq_len"),
            default=ExperimentConfig.seq_len,
            help=f"training sequence length (default {ExperimentConfig.seq_len}; extend pretrains at a "
            "quarter of it and scores at it)",
        )
        p.set_defaults(func=cmd_experiment)
