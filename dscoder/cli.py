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

from dscoder import __version__, console
from dscoder.arguments import Parser, number, setting
from dscoder.config import AT_LEAST_ONE, NON_NEGATIVE, Range
from dscoder.data import cli as data_cli
from dscoder.errors import UserError
from dscoder.evaluate import cli as eval_cli
from dscoder.experiment import cli as experiment_cli
from dscoder.infer import cli as infer_cli
from dscoder.quickstart.stages import QuickstartConfig
from dscoder.train import cli as train_cli

log = logging.getLogger("dscoder")


# --- tokenizer -------------------------------------------------------------------------------


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dscoder import tokenizer
    from dscoder.artifacts import output_dir, write_manifest
    from dscoder.texts import read_texts

    _refuse_existing(args.out, args.force)
    skips: Counter = Counter()
    texts = read_texts(args.inputs, skips, args.max_bytes)
    if not texts:
        raise UserError("no text files found in the inputs")
    log.info(
        "training a %d-token BPE vocabulary on %d files (%.1f MB)",
        args.vocab_size,
        len(texts),
        sum(map(len, texts)) / 1e6,
    )
    tok = tokenizer.train(
        texts, args.vocab_size, args.min_frequency, length=len(texts), show_progress=not console.quiet()
    )
    with output_dir(args.out, args.force) as out:
        tokenizer.save(tok, out)
        write_manifest(
            out,
            "tokenizer",
            method="train",
            inputs=[str(p) for p in args.inputs],
            config={"vocab_size": args.vocab_size, "min_frequency": args.min_frequency, "max_bytes": args.max_bytes},
            files=len(texts),
            skipped=dict(skips),
        )
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
        write_manifest(
            out,
            "model",
            method="init",
            preset=args.preset,
            config=config.to_dict(cfg),
            tokenizer=str(args.tokenizer),
            seed=args.seed,
            weights=not args.no_weights,
        )
    total = model.count_parameters(hf_cfg)["total"]
    print(
        f"model: {args.out} ({args.preset}, {total / 1e6:,.1f}M parameters{', config only' if args.no_weights else ''})"
    )
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from dscoder import model

    if args.model.suffix == ".gguf" and args.model.is_file():
        return _gguf_info(args)
    info = model.describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    p, lay = info["parameters"], info["layout"]
    saved = info["saved_parameters"]
    print(f"model       {args.model} ({info['architecture']}, {lay['dtype']})")
    size = f"{p['total'] / 1e9:.2f} B" if p["total"] >= 1e9 else f"{p['total'] / 1e6:.1f} M"
    print(
        f"parameters  {p['total']:,} ({size})"
        + ("" if saved is None else f"; weights file holds {saved:,}")
        + ("" if saved is not None else "; no weights saved")
    )
    print(
        f"            embedding {p['embedding']:,}  attention {p['attention']:,}  mlp {p['mlp']:,}"
        f"  norms {p['norms']:,}  lm_head {p['lm_head']:,}"
    )
    gqa = "" if lay["num_key_value_heads"] == lay["num_attention_heads"] else " (grouped-query)"
    print(
        f"layout      {lay['num_hidden_layers']} layers, hidden {lay['hidden_size']}, "
        f"ffn {lay['intermediate_size']}, heads {lay['num_attention_heads']} / kv "
        f"{lay['num_key_value_heads']}{gqa}, head_dim {lay['head_dim']}"
    )
    tokens = "" if lay["tokenizer_tokens"] is None else f" ({lay['tokenizer_tokens']:,} tokenizer tokens)"
    print(
        f"vocabulary  {lay['vocab_size']:,} embedding rows{tokens}; bos {lay['bos_token_id']}, "
        f"eos {lay['eos_token_id']}"
    )
    rope = f"RoPE theta {lay['rope_theta']:g}"
    if lay["rope_type"] != "default":
        rope += f", {lay['rope_type']} scaling x{lay['rope_factor']:g}"
    print(f"context     {lay['max_position_embeddings']:,} positions; {rope}")
    weights = "  ".join(f"{k} {human_bytes(v)}" for k, v in info["weight_bytes"].items())
    print(f"weights     {weights}")
    if info["stored_bytes"]:
        print(f"stored      {human_bytes(info['stored_bytes'])} of safetensors")
    q = info["quantization"]
    if q is not None:
        group = f", groups of {q['group_size']}" if q["group_size"] else ", one scale per output channel"
        kernel = q["kernel_cpu"]
        print(
            f"quantized   int{q['bits']}{group}, output head int{q['lm_head_bits']}; computes in {lay['dtype']} "
            f"with {kernel}"
        )
    print(
        f"kv cache    {human_bytes(info['kv_cache_bytes_per_token_bf16'])} per token in bfloat16; "
        f"{human_bytes(info['kv_cache_bytes_full_context_bf16'])} at full context"
    )
    print(
        f"training    {human_bytes(info['adamw_training_bytes'])} for fp32 weights, gradients and "
        f"AdamW moments (before activations)"
    )
    return 0


def cmd_model_quantize(args: argparse.Namespace) -> int:
    from dscoder import model, quantize
    from dscoder.artifacts import output_dir, read_manifest, write_manifest

    _refuse_existing(args.out, args.force)
    hf_cfg = model.load_config(args.model)
    stored = quantize.of_config(hf_cfg)
    if stored is not None:
        raise UserError(
            f"--model {args.model}: already quantized (int{stored['bits']}); quantize the dense model it came from"
        )
    group_size = quantize.check(args.bits, args.group_size, hf_cfg)
    net, _ = model.load(args.model)
    quantize.quantize_model(net, args.bits, group_size)
    with output_dir(args.out, args.force) as out:
        model.save(out, net.config, args.model, net)
        write_manifest(
            out,
            "model",
            method="quantize",
            source=str(args.model.resolve()),
            source_record=read_manifest(args.model),
            quantization=net.config.quantization_config,
        )
    described = model.describe(args.out)
    print(
        f"model: {args.out} (int{args.bits}{f', groups of {group_size}' if group_size else ''}; "
        f"{human_bytes(described['stored_bytes'])} of weights, from {human_bytes(described['weight_bytes'][described['layout']['dtype']])})"
    )
    return 0


def cmd_model_merge(args: argparse.Namespace) -> int:
    from dscoder.train import lora

    _refuse_existing(args.out, args.force)
    lora.merge(args.model, args.adapter, args.out, args.force)
    print(f"model: {args.out} ({args.model} with the adapter {args.adapter} folded in)")
    return 0


def _gguf_info(args: argparse.Namespace) -> int:
    from dscoder import export

    facts = export.describe(args.model)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    get = facts.get
    print(
        f"gguf        {args.model} ({get('architecture')}, {human_bytes(facts['bytes'])}; tensors "
        + ", ".join(f"{n} {k}" for k, n in sorted(facts["tensors"].items()))
        + ")"
    )
    print(f"name        {get('name')}; {facts['parameters']:,} parameters")
    print(
        f"layout      {get('num_hidden_layers')} layers, hidden {get('hidden_size')}, ffn {get('intermediate_size')}, "
        f"heads {get('num_attention_heads')} / kv {get('num_key_value_heads')}"
    )
    rope = f"RoPE theta {get('rope_theta'):g}" if get("rope_theta") is not None else "RoPE theta (default)"
    if get("rope_scaling"):
        rope += f", {get('rope_scaling')} scaling x{get('rope_factor'):g}"
    print(f"context     {get('max_position_embeddings')} positions; {rope}")
    print(
        f"tokenizer   {get('tokenizer_model')} with pre-tokenizer {get('tokenizer_pre')}; {facts['tokens']:,} tokens; "
        f"bos {get('bos_token_id')}, eos {get('eos_token_id')}, eot {get('eot_token_id')}"
    )
    fim = (get("fim_prefix_token_id"), get("fim_suffix_token_id"), get("fim_middle_token_id"))
    print(
        "fim         "
        + (
            "none (llama.cpp's /infill refuses this file)"
            if None in fim
            else f"prefix {fim[0]}, suffix {fim[1]}, middle {fim[2]}"
        )
    )
    print(f"chat        {'template included' if facts['chat_template'] else 'no template'}")
    return 0


def cmd_model_export_gguf(args: argparse.Namespace) -> int:
    from dscoder import export

    facts = export.export(args.model, args.out, args.type, args.force)
    print(
        f"gguf: {args.out} ({args.type}, {human_bytes(facts['bytes'])}; tokenizer pre {facts.get('tokenizer_pre')}, "
        f"RoPE {facts.get('rope_scaling') or 'unscaled'}{' x%g' % facts['rope_factor'] if facts.get('rope_scaling') else ''})"
    )
    return 0


def cmd_model_presets(args: argparse.Namespace) -> int:
    from dscoder import model

    for name, preset in model.PRESETS.items():
        c = preset.config
        print(
            f"{name:22s} {c.num_hidden_layers:3d} layers  hidden {c.hidden_size:5d}  heads "
            f"{c.num_attention_heads:3d}/{c.num_key_value_heads:<3d} context {c.max_position_embeddings:6d}"
            f"  lr {preset.max_lr:g}  {preset.about}"
        )
    return 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- quickstart ------------------------------------------------------------------------------


def cmd_quickstart(args: argparse.Namespace) -> int:
    from dscoder.quickstart.stages import run

    cfg = QuickstartConfig(minutes=args.minutes, corpus_mb=args.corpus_mb)
    data = run(args.out, cfg, model=args.model, force=args.force, quantize=infer_cli.QUANTIZE[args.quantize])
    print(f"\nreport     {args.out / 'report.md'}  (figures in {args.out / 'report.json'})")
    for name, folder in data["models"].items():
        print(f"model      {name:10s} {folder}")
    if (args.out / "corpus").is_dir():
        print(f"corpus     {args.out / 'corpus'}")
    print(f"held out   {args.out / 'heldout'}")
    if (args.out / "tokenizer").is_dir():
        print(f"tokenizer  {args.out / 'tokenizer'}")
    print("seconds    " + ", ".join(f"{k} {v:.0f}" for k, v in data["seconds"].items()))
    return 0


# --- adapt -------------------------------------------------------------------------------------

ADAPT_HELP = {
    "held_out": "share of each repository's code files held out",
    "steps": "optimizer steps",
    "minutes": "train for about this long instead of --steps (0: --steps)",
    "seq_len": "tokens per sequence",
    "batch_size": "sequences per step",
    "lr": "peak learning rate of the adapters",
    "fim_rate": "share of documents turned into FIM",
    "lora_rank": "rank of the adapters",
    "lora_alpha": "adapter scale numerator, updates x alpha/rank",
    "lora_targets": "projections with adapters",
    "eval_items": "most held-out windows, FIM lines and cross-file lines measured",
    "seed": "seed of the split, the cases and training",
}


def cmd_adapt(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dscoder import adapt

    given = {k: getattr(args, k) for k in ADAPT_HELP if getattr(args, k) is not None}
    cfg = replace(adapt.AdaptConfig(), **({**adapt.QUICK, **given} if args.quick else given), instruct=args.instruct)
    data = adapt.run(args.model, args.repos, args.out, cfg, resume=args.resume, force=args.force)
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"adapter    {data['adapter']}")
    return 0


# --- plumbing --------------------------------------------------------------------------------


def _refuse_existing(path: str | Path, force: bool) -> None:
    """Fail before any work when the output folder exists (output_dir checks again at the end)."""
    from dscoder.artifacts import check_output

    check_output(path, force, folder=True)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dscoder",
        description="DeepSeek-Coder end to end: repository-level data, tokenizer, model presets, "
        "pretraining with FIM, long-context extension, instruction tuning, inference and serving.",
    )
    parser.add_argument("--version", action="version", version=f"dscoder {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and results")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    data_cli.add_commands(groups)

    tok = groups.add_parser("tokenizer", help="train or import a DeepSeek-Coder tokenizer")
    tok_cmds = tok.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = tok_cmds.add_parser(
        "train",
        help="learn a byte-level BPE vocabulary on code files and folders",
        description="Learn a byte-level BPE vocabulary (DeepSeek pre-tokenizer) on code files and "
        "folders; the DeepSeek added tokens (BOS, EOS, FIM, pad, User/Assistant, EOT) follow it.",
        example="dscoder tokenizer train runs/corpus --vocab-size 16000 --out runs/tok",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="code file or folder, or a corpus folder from `dscoder data build`",
    )
    p.add_argument(
        "--vocab-size",
        type=number(int, Range(256)),
        required=True,
        help="learned tokens, byte alphabet (256) included (the released vocabulary has 32000)",
    )
    p.add_argument("--min-frequency", type=number(int, AT_LEAST_ONE), default=2, help="least count for a merge")
    p.add_argument(
        "--max-bytes",
        type=number(int, AT_LEAST_ONE),
        default=None,
        help="stop reading files after this many characters (default: read all)",
    )
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_tokenizer_train)

    p = tok_cmds.add_parser(
        "import-gguf",
        help="convert a llama.cpp GGUF vocabulary into Hugging Face tokenizer files",
        description="Convert a llama.cpp vocabulary file (e.g. ggml-vocab-deepseek-coder.gguf) into "
        "Hugging Face tokenizer files with the released ids, added tokens and chat template.",
        example="dscoder tokenizer import-gguf ggml-vocab-deepseek-coder.gguf --out runs/deepseek-tokenizer",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="GGUF file with a tokenizer")
    p.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_tokenizer_import_gguf)

    mod = groups.add_parser("model", help="create and inspect model folders")
    mod_cmds = mod.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    p = mod_cmds.add_parser(
        "init",
        help="write a freshly initialised model folder from a preset",
        description="Write a Hugging Face model folder (config.json, model.safetensors, "
        "generation_config.json, tokenizer files) for a preset. Any architecture field can be "
        "changed with --model.FIELD=VALUE (e.g. --model.num_hidden_layers=2) or a TOML file's "
        "[model] section.",
        example="dscoder model init --preset tiny --tokenizer runs/tok --out runs/tiny-init --model.num_hidden_layers=2",
    )
    p.add_argument("--preset", required=True, help="preset name (see `dscoder model presets`)")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--config", type=Path, help="TOML file whose [model] section overrides the preset")
    p.add_argument(
        "--no-weights",
        action="store_true",
        help="write only the config and tokenizer files (inspect a 33B layout on a laptop)",
    )
    p.add_argument("--seed", type=number(int, NON_NEGATIVE), default=0, help="initialisation seed")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_model_init, overrides=True)

    p = mod_cmds.add_parser(
        "info",
        help="parameters, layout and memory of a model folder or GGUF file",
        description="Print parameters, layout and memory at each dtype of a "
        "model folder (ours or a released DeepSeek-Coder download), or what a GGUF "
        "file carries (layout, RoPE, tokenizer, FIM ids, chat template).",
        example="dscoder model info runs/pretrain/final",
    )
    p.add_argument("model", type=Path, metavar="PATH", help="model folder or .gguf file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_model_info)

    p = mod_cmds.add_parser(
        "quantize",
        help="write a copy of a model folder with int8 or int4 weights",
        description="Quantize the weights of a model folder for fast CPU decoding: --bits 8 gives one "
        "scale per output channel, --bits 4 one per group of --group-size inputs (the output head stays "
        "int8). Every command loads the result like any model folder; docs/formats.md describes it.",
        example="dscoder model quantize --model runs/pretrain/final --bits 8 --out runs/pretrain-int8",
    )
    p.add_argument("--model", type=Path, required=True, help="dense model folder (ours or a released one)")
    p.add_argument("--bits", type=int, required=True, choices=[8, 4], help="8 (int8) or 4 (int4)")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128, 256], help="inputs per int4 scale (default: 32)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_model_quantize)

    p = mod_cmds.add_parser(
        "merge",
        help="fold a LoRA adapter into its base: a plain model folder",
        description="Add a LoRA adapter (PEFT's format, as `train --lora-rank` writes it) to the weights of "
        "the dense model it was trained on and write a plain model folder, in the base's dtype, that every "
        "command, `export-gguf` and other engines load. A quantized base is refused: merge into the dense "
        "base, then `model quantize` the result.",
        example="dscoder model merge --model runs/pretrain/final --adapter runs/lora/final --out runs/merged",
    )
    p.add_argument("--model", type=Path, required=True, help="the dense base model folder the adapter was trained on")
    p.add_argument(
        "--adapter", type=Path, required=True, help="adapter folder (adapter_config.json, adapter_model.safetensors)"
    )
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_model_merge)

    p = mod_cmds.add_parser(
        "export-gguf",
        help="write a GGUF file for llama.cpp, Ollama and LM Studio",
        description="Convert a model folder (dense or quantized, ours or a released DeepSeek-Coder one) into "
        "one GGUF file with llama.cpp's own writer: the weights as --type, the DeepSeek-Coder tokenizer "
        "(pre-tokenizer deepseek-coder, FIM and EOT ids), the RoPE base and linear scaling, and the chat "
        "template. A tokenizer without FIM tokens is exported with a warning (llama.cpp's /infill then "
        "refuses the file). README: running it in Ollama and llama.cpp's server.",
        example="dscoder model export-gguf --model runs/pretrain/final --type q8_0 --out runs/pretrain-q8_0.gguf",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--out", type=Path, required=True, help="GGUF file to write (name ending in .gguf)")
    p.add_argument(
        "--type",
        default="f16",
        choices=["f16", "q8_0", "q4_0"],
        help="f16, q8_0 (8-bit blocks) or q4_0 (4-bit blocks, output head q8_0)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_model_export_gguf)

    p = mod_cmds.add_parser(
        "presets", help="list the model presets", description="List the model presets.", example="dscoder model presets"
    )
    p.set_defaults(func=cmd_model_presets)

    train_cli.add_commands(groups)
    infer_cli.add_commands(groups)
    eval_cli.add_commands(groups)
    experiment_cli.add_commands(groups)

    p = groups.add_parser(
        "quickstart",
        help="the whole pipeline on this machine's Python code, with a report (make demo)",
        description="Build a corpus from the installed Python packages, train a tokenizer, pretrain "
        "the tiny preset with FIM (and a no-FIM control), extend its context, instruction-tune it, "
        "evaluate all of them, show every way of using the model, and write a report. Finished "
        "stages are reused when run again. With --model, demonstrate an existing model folder instead.",
        example="dscoder quickstart --minutes 3 --out runs/qs3",
    )
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder")
    p.add_argument(
        "--minutes",
        type=setting(QuickstartConfig, "minutes"),
        default=QuickstartConfig.minutes,
        help="pretraining minutes for the FIM model, and again for the control",
    )
    p.add_argument(
        "--corpus-mb",
        type=setting(QuickstartConfig, "corpus_mb"),
        default=QuickstartConfig.corpus_mb,
        help="megabytes of installed code to read",
    )
    p.add_argument("--model", type=Path, help="skip training: evaluate and demonstrate this model folder")
    infer_cli.quantize_flag(p)
    p.add_argument("--force", action="store_true", help="start over instead of reusing finished stages")
    p.set_defaults(func=cmd_quickstart)

    from dscoder.adapt import QUICK, AdaptConfig

    p = groups.add_parser(
        "adapt",
        help="adapt a model to your repositories with LoRA, measured before and after on held-out files",
        description="Build a corpus from --repos with every `data build` step, hold out a share of each "
        "repository's files, continue FIM pretraining of --model with LoRA on the rest, and write a report "
        "of the base against the adapted model on the held-out files: loss, single-line FIM exact match "
        "and edit similarity, and repository-level completion of lines that use names from other files. "
        "--quick runs in minutes on a CPU with a tiny model; the same command takes a released "
        "checkpoint on a GPU. The adapter is OUT/train/final (PEFT's format).",
        example="dscoder adapt --model runs/pretrain/final --repos ~/src/myproject ~/src/mylib --out runs/adapted --quick",
    )
    p.add_argument("--model", type=Path, required=True, help="dense model folder to adapt (ours or a released one)")
    p.add_argument(
        "--repos",
        type=Path,
        nargs="+",
        required=True,
        metavar="PATH",
        help="repository folders, git repositories or archives",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    for name, text in ADAPT_HELP.items():
        default = getattr(AdaptConfig(), name)
        shown = f"{default:g}" if isinstance(default, float) else default
        quick = f"; --quick: {QUICK[name]:g}" if name in QUICK else ""
        p.add_argument(
            "--" + name.replace("_", "-"), type=setting(AdaptConfig, name), help=f"{text} (default: {shown}{quick})"
        )
    p.add_argument("--quick", action="store_true", help="small settings that finish in minutes on a CPU")
    p.add_argument(
        "--instruct",
        action="store_true",
        help="then instruction-tune a second adapter on pairs from the training files' documented functions",
    )
    p.add_argument("--resume", action="store_true", help="continue OUT, reusing its finished stages")
    p.add_argument("--force", action="store_true", help="replace OUT (only a folder dscoder adapt wrote)")
    p.set_defaults(func=cmd_adapt)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported in one line)
        return exc.code if isinstance(exc.code, int) else 2
    args.extra = extra
    console.setup(args.quiet)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"dscoder: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dscoder: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`dscoder ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
