"""The `dscoder` command: one short function per subcommand (load config, build, run, save).

Heavy libraries (torch, transformers) are imported inside the commands, so `dscoder --help`
answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from dscoder import __version__
from dscoder.errors import UserError

log = logging.getLogger("dscoder")


# --- data ------------------------------------------------------------------------------------

def cmd_data_build(args: argparse.Namespace) -> int:
    from dscoder import config
    from dscoder.data.build import build
    from dscoder.data.stats import report
    from dscoder.data.steps import DataConfig

    cfg = config.load(DataConfig(), args.config, config.parse_overrides(args.extra))
    if args.workers is not None:
        cfg = config.apply_overrides(cfg, {"run.workers": str(args.workers)})
    stats = build(args.out, args.sources, args.repos_in, args.decontaminate, cfg, engine=args.engine,
                  ray_address=args.ray_address, force=args.force)
    print(report(stats.to_json()))
    print(f"\ncorpus: {args.out}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from dscoder.data import stats

    data = stats.read(args.corpus)
    print(json.dumps(data, indent=2) if args.json else stats.report(data))
    return 0


# --- train -----------------------------------------------------------------------------------

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


# --- tokenizer -------------------------------------------------------------------------------

def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dscoder import tokenizer
    from dscoder.artifacts import output_dir, write_manifest
    from dscoder.data.sources import read_texts

    _refuse_existing(args.out, args.force)
    skips: Counter = Counter()
    texts = read_texts(args.inputs, skips, args.max_bytes)
    if not texts:
        raise UserError("no text files found in the inputs")
    log.info("training a %d-token BPE vocabulary on %d files (%.1f MB)", args.vocab_size,
             len(texts), sum(map(len, texts)) / 1e6)
    tok = tokenizer.train(texts, args.vocab_size, args.min_frequency, length=len(texts))
    with output_dir(args.out, args.force) as out:
        tokenizer.save(tok, out)
        write_manifest(out, "tokenizer", method="train", inputs=[str(p) for p in args.inputs],
                       config={"vocab_size": args.vocab_size, "min_frequency": args.min_frequency,
                               "max_bytes": args.max_bytes},
                       files=len(texts), skipped=dict(skips))
    print(f"tokenizer: {args.out} ({tok.get_vocab_size()} tokens)")
    return 0


def cmd_tokenizer_import_gguf(args: argparse.Namespace) -> int:
    from dscoder import tokenizer
    from dscoder.artifacts import output_dir, write_manifest

    _refuse_existing(args.out, args.force)
    tok, facts = tokenizer.from_gguf(args.file)
    with output_dir(args.out, args.force) as out:
        tokenizer.save(tok, out, eos_token=facts["eos_token"], add_bos_token=facts["add_bos_token"])
        write_manifest(out, "tokenizer", method="import-gguf", inputs=[str(args.file)], facts=facts)
    print(f"tokenizer: {args.out} ({tok.get_vocab_size()} tokens, embedding rows {facts['vocab_size']})")
    return 0


# --- model -----------------------------------------------------------------------------------

def cmd_model_init(args: argparse.Namespace) -> int:
    from dscoder import config, model, tokenizer
    from dscoder.artifacts import output_dir, write_manifest

    _refuse_existing(args.out, args.force)
    preset = model.get_preset(args.preset)
    cfg = config.load(preset.config, args.config, config.parse_overrides(args.extra), section="model")
    tok = tokenizer.load(args.tokenizer)
    hf_cfg = model.hf_config(cfg, tok)
    with output_dir(args.out, args.force) as out:
        net = None if args.no_weights else model.build(hf_cfg, seed=args.seed)
        model.save(out, hf_cfg, args.tokenizer, net)
        write_manifest(out, "model", method="init", preset=args.preset, config=config.to_dict(cfg),
                       tokenizer=str(args.tokenizer), seed=args.seed, weights=not args.no_weights)
    total = model.count_parameters(hf_cfg)["total"]
    print(f"model: {args.out} ({args.preset}, {total / 1e6:,.1f}M parameters"
          f"{', config only' if args.no_weights else ''})")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from dscoder import model

    info = model.describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    p, lay = info["parameters"], info["layout"]
    saved = info["saved_parameters"]
    print(f"model       {args.model} ({info['architecture']}, {lay['dtype']})")
    size = f"{p['total'] / 1e9:.2f} B" if p["total"] >= 1e9 else f"{p['total'] / 1e6:.1f} M"
    print(f"parameters  {p['total']:,} ({size})"
          + ("" if saved is None else f"; weights file holds {saved:,}")
          + ("" if saved is not None else "; no weights saved"))
    print(f"            embedding {p['embedding']:,}  attention {p['attention']:,}  mlp {p['mlp']:,}"
          f"  norms {p['norms']:,}  lm_head {p['lm_head']:,}")
    gqa = "" if lay["num_key_value_heads"] == lay["num_attention_heads"] else " (grouped-query)"
    print(f"layout      {lay['num_hidden_layers']} layers, hidden {lay['hidden_size']}, "
          f"ffn {lay['intermediate_size']}, heads {lay['num_attention_heads']} / kv "
          f"{lay['num_key_value_heads']}{gqa}, head_dim {lay['head_dim']}")
    tokens = "" if lay["tokenizer_tokens"] is None else f" ({lay['tokenizer_tokens']:,} tokenizer tokens)"
    print(f"vocabulary  {lay['vocab_size']:,} embedding rows{tokens}; bos {lay['bos_token_id']}, "
          f"eos {lay['eos_token_id']}")
    rope = f"RoPE theta {lay['rope_theta']:g}"
    if lay["rope_type"] != "default":
        rope += f", {lay['rope_type']} scaling x{lay['rope_factor']:g}"
    print(f"context     {lay['max_position_embeddings']:,} positions; {rope}")
    weights = "  ".join(f"{k} {human_bytes(v)}" for k, v in info["weight_bytes"].items())
    print(f"weights     {weights}")
    print(f"kv cache    {human_bytes(info['kv_cache_bytes_per_token_bf16'])} per token in bfloat16; "
          f"{human_bytes(info['kv_cache_bytes_full_context_bf16'])} at full context")
    print(f"training    {human_bytes(info['adamw_training_bytes'])} for fp32 weights, gradients and "
          f"AdamW moments (before activations)")
    return 0


def cmd_model_presets(args: argparse.Namespace) -> int:
    from dscoder import model

    for name, preset in model.PRESETS.items():
        c = preset.config
        print(f"{name:22s} {c.num_hidden_layers:3d} layers  hidden {c.hidden_size:5d}  heads "
              f"{c.num_attention_heads:3d}/{c.num_key_value_heads:<3d} context {c.max_position_embeddings:6d}"
              f"  lr {preset.max_lr:g}  {preset.about}")
    return 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- quickstart ------------------------------------------------------------------------------

def cmd_quickstart(args: argparse.Namespace) -> int:
    from dscoder import quickstart

    quickstart.run(Path(args.out), force=args.force, max_bytes=args.corpus_mb * 1_000_000)
    return 0


# --- plumbing --------------------------------------------------------------------------------

def _refuse_existing(path: str | Path, force: bool) -> None:
    """Fail before any work when the output folder exists (output_dir checks again at the end)."""
    if Path(path).exists() and not force:
        raise UserError(f"{path} already exists (use --force to replace it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dscoder",
        description="DeepSeek-Coder end to end: tokenizer, model presets and (as they land) data, "
        "training, inference, serving and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"dscoder {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and results")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    data = groups.add_parser("data", help="build a repository-level code corpus")
    data_cmds = data.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = data_cmds.add_parser(
        "build", help="collect, filter, order by dependencies, deduplicate, screen, decontaminate, redact",
        description="Build a corpus of repository-level samples. Each SRC is one repository (a folder, "
        "a git repository, a .tar/.tar.gz/.zip archive) or a dataset file (parquet/jsonl with "
        "repository, path and content columns). Any setting can be changed with "
        "--SECTION.KEY=VALUE (e.g. --dedup.threshold=0.8) or a TOML --config file; see docs/data.md. "
        "Run the same command again to resume an interrupted build.")
    p.add_argument("sources", nargs="*", type=Path, metavar="SRC", help="repository or dataset file")
    p.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    p.add_argument("--repos-in", type=Path, action="append", default=[], metavar="DIR",
                   help="take every subfolder (and archive) of DIR as a repository (repeatable)")
    p.add_argument("--decontaminate", type=Path, nargs="+", default=[], metavar="FILE",
                   help="benchmark files (HumanEval, MBPP, MultiPL-E, HumanEval-X jsonl/jsonl.gz)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local worker processes (default) or Ray")
    p.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU core)")
    p.add_argument("--config", type=Path, help="TOML file with [collect], [filters], [quality], "
                   "[decontam], [pii], [order], [dedup] and [run] sections")
    p.add_argument("--force", action="store_true", help="discard what --out holds and build again")
    p.set_defaults(func=cmd_data_build, overrides=True)

    p = data_cmds.add_parser("stats", help="what a corpus build kept and dropped, per step, rule and language")
    p.add_argument("corpus", type=Path, metavar="DIR", help="corpus folder")
    p.add_argument("--json", action="store_true", help="print stats.json as it is")
    p.set_defaults(func=cmd_data_stats)

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

    tok = groups.add_parser("tokenizer", help="train or import a DeepSeek-Coder tokenizer")
    tok_cmds = tok.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = tok_cmds.add_parser(
        "train", help="learn a byte-level BPE vocabulary on code files and folders",
        description="Learn a byte-level BPE vocabulary (DeepSeek pre-tokenizer) on code files and "
        "folders; the DeepSeek added tokens (BOS, EOS, FIM, pad, User/Assistant, EOT) follow it.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="code file or folder, or a corpus folder from `dscoder data build`")
    p.add_argument("--vocab-size", type=int, required=True,
                   help="learned tokens, byte alphabet included (the released vocabulary has 32000)")
    p.add_argument("--min-frequency", type=int, default=2, help="least count for a merge (default 2)")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="stop reading files after this many characters (default: read all)")
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_tokenizer_train)

    p = tok_cmds.add_parser(
        "import-gguf", help="convert a llama.cpp GGUF vocabulary into Hugging Face tokenizer files",
        description="Convert a llama.cpp vocabulary file (e.g. ggml-vocab-deepseek-coder.gguf) into "
        "Hugging Face tokenizer files with the released ids, added tokens and chat template.")
    p.add_argument("file", type=Path, metavar="FILE", help="GGUF file with a tokenizer")
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_tokenizer_import_gguf)

    mod = groups.add_parser("model", help="create and inspect model folders")
    mod_cmds = mod.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = mod_cmds.add_parser(
        "init", help="write a freshly initialised model folder from a preset",
        description="Write a Hugging Face model folder (config.json, model.safetensors, "
        "generation_config.json, tokenizer files) for a preset. Any architecture field can be "
        "changed with --model.FIELD=VALUE (e.g. --model.num_hidden_layers=2) or a TOML file's "
        "[model] section.")
    p.add_argument("--preset", required=True, help="preset name (see `dscoder model presets`)")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--config", type=Path, help="TOML file whose [model] section overrides the preset")
    p.add_argument("--no-weights", action="store_true",
                   help="write only the config and tokenizer files (inspect a 33B layout on a laptop)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_model_init, overrides=True)

    p = mod_cmds.add_parser("info", help="parameters, layout and memory of a model folder",
                            description="Print parameters, layout and memory at each dtype of a "
                            "model folder (ours or a released DeepSeek-Coder download).")
    p.add_argument("model", type=Path, metavar="DIR", help="model folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_model_info)

    p = mod_cmds.add_parser("presets", help="list the model presets")
    p.set_defaults(func=cmd_model_presets)

    p = groups.add_parser(
        "quickstart", help="the demo: tokenizer and tiny model from this machine's Python code",
        description="Train a tokenizer on this machine's installed Python code, build a tiny "
        "model, save it, load it back through transformers and print a completion. Finished "
        "stages are reused when run again.")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder (default runs/quickstart)")
    p.add_argument("--corpus-mb", type=int, default=16, help="megabytes of code to read (default 16)")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.set_defaults(func=cmd_quickstart)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_to_stderr(level: int) -> None:
    """Progress and skip counts go to stderr as plain lines; results go to stdout."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    _log_to_stderr(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"dscoder: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dscoder: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
