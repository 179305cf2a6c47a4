"""The `dscoder train` commands."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from dscoder.errors import UserError


# Common flags and the setting each one sets.
TRAIN_FLAGS = {
    "max_steps": "loop.max_steps", "seq_len": "data.seq_len", "batch_size": "loop.batch_size",
    "grad_accum": "loop.grad_accum", "lr": "optim.lr", "fim_rate": "fim.rate", "seed": "loop.seed",
    "eval_every": "loop.eval_every", "save_every": "loop.save_every",
}


def _train_config(args: argparse.Namespace, stage: str):
    from dscoder import config
    from dscoder.train.recipes import resolve

    overrides = config.parse_overrides(args.extra)
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = str(value)
    if getattr(args, "data", None):
        overrides["data.sources"] = ",".join(args.data)
    for flag in ("rope_factor", "rope_theta"):
        if getattr(args, flag, None) is not None:
            overrides[f"extend.{flag}"] = str(getattr(args, flag))
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
    from dscoder.data import corpus
    from dscoder.data.sources import read_texts
    from dscoder.train.instruct import make_pairs

    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists (use --force to replace it)")
    texts = corpus.iter_texts(args.corpus) if corpus.is_corpus(args.corpus) else iter(read_texts([args.corpus], Counter()))
    tmp = args.out.with_name(f".{args.out.name}.partial")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for pair in make_pairs(texts, args.max_pairs):
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
            count += 1
    if count == 0:
        tmp.unlink()
        raise UserError(f"{args.corpus}: no documented Python functions to turn into instructions")
    tmp.replace(args.out)
    print(f"instructions: {args.out} ({count:,} pairs)")
    return 0


def cmd_train_report(args: argparse.Namespace) -> int:
    from dscoder.train import report

    print(report.text(args.run))
    print(f"plot         {report.plot_loss(args.run)}")
    return 0


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--config", type=Path, help="TOML file with [data], [fim], [optim], [loop], [parallel], [extend]")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--seq-len", type=int, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--fim-rate", type=float, help="share of documents turned into FIM (pretraining: 0.5)")
    p.add_argument("--seed", type=int, help="seed of data order, FIM and initialisation")
    p.add_argument("--eval-every", type=int, help="steps between held-out losses")
    p.add_argument("--save-every", type=int, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(overrides=True)


def add_commands(groups) -> None:
    train = groups.add_parser("train", help="pretrain with FIM, extend the context, instruction-tune")
    train_cmds = train.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = train_cmds.add_parser(
        "pretrain", help="next-token prediction with FIM on packed corpora",
        description="Pretrain from a preset (with --tokenizer) or continue a model folder, on one or "
        "more corpora from `dscoder data build`. Any setting can be changed with "
        "--SECTION.KEY=VALUE (see docs/training.md). Works under torchrun for DDP/FSDP2.")
    p.add_argument("--data", action="append", metavar="DIR[:WEIGHT]", help="corpus folder with a mixing weight (repeatable)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (with --preset)")
    p.add_argument("--preset", help="model preset to start from (see `dscoder model presets`)")
    p.add_argument("--model", type=Path, help="model folder to continue from")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train_pretrain)

    p = train_cmds.add_parser(
        "extend", help="long-context extension: linear RoPE scaling at a longer sequence length",
        description="Continue a model at a longer --seq-len with linear RoPE scaling (factor, base); the "
        "saved config loads in transformers with that scaling.")
    p.add_argument("--model", type=Path, required=True, help="model folder to extend")
    p.add_argument("--data", action="append", metavar="DIR[:WEIGHT]", help="corpus folder with a mixing weight (repeatable)")
    p.add_argument("--rope-factor", type=float, help="linear RoPE scaling factor (default 4)")
    p.add_argument("--rope-theta", type=float, help="RoPE base (default 100000)")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train_extend)

    p = train_cmds.add_parser(
        "instruct", help="instruction tuning with the chat template, loss on responses only",
        description="Fine-tune on {instruction, output} or {messages} JSON lines rendered with the "
        "released chat template; only responses and <|EOT|> are trained; the saved model stops at <|EOT|>.")
    p.add_argument("--model", type=Path, required=True, help="model folder to tune")
    p.add_argument("--data", dest="data_file", type=Path, required=True, metavar="FILE.jsonl", help="instruction data")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train_instruct)

    p = train_cmds.add_parser(
        "make-instruct", help="derive instruction pairs from a corpus (documented Python functions)",
        description="Turn documented Python functions of a corpus (or a code folder) into "
        "{instruction, output} pairs: the docstring asks, the function answers.")
    p.add_argument("corpus", type=Path, metavar="CORPUS", help="corpus folder or code folder")
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file to write")
    p.add_argument("--max-pairs", type=int, default=20000, help="most pairs written (default 20000)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_train_make_instruct)

    p = train_cmds.add_parser("report", help="summarise a run and redraw its loss.png")
    p.add_argument("run", type=Path, metavar="RUN", help="run folder")
    p.set_defaults(func=cmd_train_report)
