"""The `dscoder train` commands."""

from __future__ import annotations

import argparse
import json
import os
import typing
from collections import Counter
from pathlib import Path

from dscoder.arguments import number, setting
from dscoder.config import AT_LEAST_ONE
from dscoder.errors import UserError

# Common flags and the setting each one sets (with that setting's bounds and stage default).
TRAIN_FLAGS = {
    "max_steps": "loop.max_steps",
    "seq_len": "data.seq_len",
    "batch_size": "loop.batch_size",
    "grad_accum": "loop.grad_accum",
    "lr": "optim.lr",
    "fim_rate": "fim.rate",
    "seed": "loop.seed",
    "eval_every": "loop.eval_every",
    "save_every": "loop.save_every",
    "rope_factor": "extend.rope_factor",
    "rope_theta": "extend.rope_theta",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_targets": "lora.targets",
    "lora_dropout": "lora.dropout",
    "logger": "loop.logger",
}


def _train_config(args: argparse.Namespace, stage: str):
    from dscoder import config
    from dscoder.train.settings import resolve

    if getattr(args, "lora_rank", None) == 0:
        raise UserError("--lora-rank 0: expected a rank of at least 1 (leave the flag out to train every weight)")
    overrides = config.parse_overrides(args.extra)
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "data", None):
        overrides["data.sources"] = ",".join(args.data)
    return resolve(stage, args.config, overrides)


def _finish_run(args: argparse.Namespace) -> int:
    from dscoder.train import report

    if os.environ.get("RANK", "0") == "0":
        print(report.text(args.out))
    return 0


def cmd_train_pretrain(args: argparse.Namespace) -> int:
    from dscoder.train.recipes import pretrain

    cfg = _train_config(args, "pretrain")
    pretrain(args.out, cfg, args.tokenizer, args.preset, args.model, resume=args.resume, force=args.force)
    return _finish_run(args)


def cmd_train_extend(args: argparse.Namespace) -> int:
    from dscoder.train.recipes import extend

    cfg = _train_config(args, "extend")
    extend(args.out, cfg, args.model, resume=args.resume, force=args.force)
    return _finish_run(args)


def cmd_train_instruct(args: argparse.Namespace) -> int:
    from dscoder.train.recipes import instruct

    cfg = _train_config(args, "instruct")
    instruct(args.out, cfg, args.model, args.data_file, resume=args.resume, force=args.force)
    return _finish_run(args)


def cmd_train_make_instruct(args: argparse.Namespace) -> int:
    from dscoder.artifacts import check_output, output_file
    from dscoder.data import corpus
    from dscoder.texts import read_texts
    from dscoder.train.instruct import make_pairs

    check_output(args.out, args.force, folder=False)
    if not args.corpus.exists():
        raise UserError(f"{args.corpus}: not found (give a corpus folder or a code folder)")
    texts = (
        corpus.iter_texts(args.corpus) if corpus.is_corpus(args.corpus) else iter(read_texts([args.corpus], Counter()))
    )
    count = 0
    with output_file(args.out, args.force) as f:
        for pair in make_pairs(texts, args.max_pairs):
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
            count += 1
        if count == 0:
            raise UserError(f"{args.corpus}: no documented Python functions to turn into instructions")
    print(f"instructions: {args.out} ({count:,} pairs)")
    return 0


def cmd_train_report(args: argparse.Namespace) -> int:
    from dscoder.train import report

    print(report.text(args.run))
    print(f"plot         {report.plot_loss(args.run)}")
    return 0


FLAG_HELP = {
    "max_steps": "optimizer steps",
    "seq_len": "tokens per sequence",
    "batch_size": "sequences per micro-batch per process",
    "grad_accum": "micro-batches per step",
    "lr": "peak learning rate",
    "fim_rate": "share of documents turned into FIM",
    "seed": "seed of data order, FIM and initialisation",
    "eval_every": "steps between held-out losses (0: at the end)",
    "save_every": "steps between checkpoints (0: at the end)",
    "rope_factor": "linear RoPE scaling factor",
    "rope_theta": "RoPE base",
    "lora_rank": "train LoRA adapters of this rank on the frozen --model (0: every weight)",
    "lora_alpha": "adapter scale numerator, updates x alpha/rank (0: 2 x rank)",
    "lora_targets": "projections with adapters: q,k,v,o,gate,up,down",
    "lora_dropout": "dropout on the adapters' inputs",
    "logger": "also send the metrics to TensorBoard (RUN/tensorboard) or W&B (RUN/wandb)",
}
DEFAULT_LR = {"pretrain": "the preset's peak rate, 3e-4 from --model", "extend": "1e-4", "instruct": "1e-5"}


def _add_train_flags(p: argparse.ArgumentParser, stage: str) -> None:
    from dscoder.config import field_annotation
    from dscoder.train import settings

    defaults = settings.resolve(stage, None, {})
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--config", type=Path, help="TOML file with [data], [fim], [optim], [loop], [parallel], [extend]")
    for flag, key in TRAIN_FLAGS.items():
        if (flag.startswith("rope_") and stage != "extend") or (flag.startswith("lora_") and stage == "extend"):
            continue
        section, name = key.split(".")
        value, cls = getattr(getattr(defaults, section), name), type(getattr(defaults, section))
        shown = DEFAULT_LR[stage] if flag == "lr" else f"{value:g}" if isinstance(value, float) else value
        annotation = field_annotation(cls, name)
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        p.add_argument(
            "--" + flag.replace("_", "-"),
            type=setting(cls, name),
            choices=choices,
            help=f"{FLAG_HELP[flag]} (default: {shown})",
        )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(overrides=True)


def add_commands(groups) -> None:
    train = groups.add_parser("train", help="pretrain with FIM, extend the context, instruction-tune")
    train_cmds = train.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = train_cmds.add_parser(
        "pretrain",
        help="next-token prediction with FIM on packed corpora",
        description="Pretrain from a preset (with --tokenizer) or continue a model folder, on one or "
        "more corpora from `dscoder data build`. Any setting can be changed with "
        "--SECTION.KEY=VALUE (see docs/training.md). Works under torchrun for DDP/FSDP2.",
        example="dscoder train pretrain --data runs/corpus --tokenizer runs/tok --preset tiny --out runs/pretrain --max-steps 2000",
    )
    p.add_argument(
        "--data", action="append", metavar="DIR[:WEIGHT]", help="corpus folder with a mixing weight (repeatable)"
    )
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (with --preset)")
    p.add_argument("--preset", help="model preset to start from (see `dscoder model presets`)")
    p.add_argument("--model", type=Path, help="model folder to continue from")
    _add_train_flags(p, "pretrain")
    p.set_defaults(func=cmd_train_pretrain)

    p = train_cmds.add_parser(
        "extend",
        help="long-context extension: linear RoPE scaling at a longer sequence length",
        description="Continue a model at a longer --seq-len with linear RoPE scaling (factor, base); the "
        "saved config loads in transformers with that scaling.",
        example="dscoder train extend --model runs/pretrain/final --data runs/corpus --seq-len 2048 --out runs/extend",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder to extend")
    p.add_argument(
        "--data", action="append", metavar="DIR[:WEIGHT]", help="corpus folder with a mixing weight (repeatable)"
    )
    _add_train_flags(p, "extend")
    p.set_defaults(func=cmd_train_extend)

    p = train_cmds.add_parser(
        "instruct",
        help="instruction tuning with the chat template, loss on responses only",
        description="Fine-tune on {instruction, output} or {messages} JSON lines rendered with the "
        "released chat template; only responses and <|EOT|> are trained; the saved model stops at <|EOT|>.",
        example="dscoder train instruct --model runs/extend/final --data runs/pairs.jsonl --out runs/instruct",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder to tune")
    p.add_argument("--data", dest="data_file", type=Path, required=True, metavar="FILE.jsonl", help="instruction data")
    _add_train_flags(p, "instruct")
    p.set_defaults(func=cmd_train_instruct)

    p = train_cmds.add_parser(
        "make-instruct",
        help="derive instruction pairs from a corpus (documented Python functions)",
        description="Turn documented Python functions of a corpus (or a code folder) into "
        "{instruction, output} pairs: the docstring asks, the function answers.",
        example="dscoder train make-instruct runs/corpus --out runs/pairs.jsonl",
    )
    p.add_argument("corpus", type=Path, metavar="CORPUS", help="corpus folder or code folder")
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file to write")
    p.add_argument("--max-pairs", type=number(int, AT_LEAST_ONE), default=20000, help="most pairs written")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_train_make_instruct)

    p = train_cmds.add_parser(
        "report",
        help="summarise a run and redraw its loss.png",
        description="Summarise a training run and redraw its loss.png.",
        example="dscoder train report runs/pretrain",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder")
    p.set_defaults(func=cmd_train_report)
