"""The inference commands: `dscoder complete`, `infill`, `repo-complete`, `chat` and `serve`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dscoder.arguments import PORT, number, setting
from dscoder.config import AT_LEAST_ONE, NON_NEGATIVE
from dscoder.errors import UserError
from dscoder.infer.sampling import SamplingParams

log = logging.getLogger("dscoder")


def _engine(args: argparse.Namespace, adapters=None):
    from dscoder.infer.engine import Engine

    return Engine.load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        quantize=QUANTIZE[args.quantize],
        context=getattr(args, "context", None),
        rows=getattr(args, "max_batch", 1),  # one answer at a time, except for serve
        adapters=adapters,
    )


def _text(value: str, what: str) -> str:
    """A prompt given on the command line or standard input, with characters that are not text (a
    byte that is not UTF-8 reads as a lone surrogate) replaced by U+FFFD, and a warning."""
    from dscoder import formats

    fixed, count = formats.well_formed(value)
    if count:
        log.warning("%s: %d byte(s) that are not UTF-8 text replaced by U+FFFD", what, count)
    return fixed


def _params(args: argparse.Namespace, engine):
    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop or ()),
    )


def _generate(args: argparse.Namespace, engine, prompt) -> str:
    """Run one prompt, printing the prompt first with --show-prompt and streaming with --stream."""
    from dscoder.infer.engine import Sequence

    if args.show_prompt:
        sys.stdout.write(f"=== prompt ===\n{prompt.text}\n=== completion ===\n")
    on_delta = None
    if args.stream:

        def on_delta(delta: str) -> None:
            sys.stdout.write(delta)
            sys.stdout.flush()

    (sequence,) = engine.generate([Sequence(prompt.ids, _params(args, engine), on_delta)])
    if not args.stream:
        sys.stdout.write(sequence.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return sequence.text


def cmd_complete(args: argparse.Namespace) -> int:
    from dscoder.infer import prompts

    engine = _engine(args)
    text = _text(sys.stdin.read(), "standard input") if args.prompt == "-" else _text(args.prompt, "PROMPT")
    _generate(args, engine, prompts.completion(engine, text, args.max_new_tokens))
    return 0


def cmd_infill(args: argparse.Namespace) -> int:
    from dscoder.infer import prompts
    from dscoder.infer.engine import is_instruct

    engine = _engine(args)
    if args.file is not None:
        if args.line is None:
            raise UserError("--file needs --line (and optionally --column)")
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{args.file}: cannot be read ({exc})") from None
        prefix, suffix = prompts.split_at_cursor(text, args.line, args.column)
    elif args.prefix is not None:
        prefix, suffix = _text(args.prefix, "--prefix"), _text(args.suffix or "", "--suffix")
    else:
        raise UserError("give --prefix/--suffix or --file/--line")
    if is_instruct(engine.tokenizer):
        log.warning("%s is an instruct model: insertion is what base models are trained for", engine.name)
    _generate(args, engine, prompts.insertion(engine, prefix, suffix, args.max_new_tokens))
    return 0


def cmd_repo_complete(args: argparse.Namespace) -> int:
    from dscoder.infer import repo_context

    engine = _engine(args)
    prompt = repo_context.build(engine, args.repo, args.file, args.line, args.column, args.max_new_tokens)
    _generate(args, engine, prompt)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from dscoder.infer import prompts
    from dscoder.infer.engine import is_instruct

    engine = _engine(args)
    if not is_instruct(engine.tokenizer):
        log.warning("%s is a base model: it was not tuned for chat, answers may ramble", engine.name)
    messages = [{"role": "system", "content": _text(args.system, "--system")}] if args.system else []
    if args.message is not None:
        messages.append({"role": "user", "content": _text(args.message, "--message")})
        _generate(args, engine, prompts.chat(engine, messages, args.max_new_tokens))
        return 0
    print(
        f"chatting with {engine.name} (empty line: nothing; /reset: new conversation; /exit or Ctrl-D: quit)",
        file=sys.stderr,
    )
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line.strip():
            continue
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": _text(line, "your message")})
        try:
            answer = _generate(args, engine, prompts.chat(engine, messages, args.max_new_tokens))
        except UserError as exc:
            print(f"dscoder: {exc}", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})


def cmd_serve(args: argparse.Namespace) -> int:
    from dscoder.infer.server import ServeLimits, bind, require_serve_stack, serve

    require_serve_stack()  # before the model loads
    if (args.model is None) == (args.upstream is None):
        raise UserError("give either --model (a model folder) or --upstream (an OpenAI-compatible server's URL)")
    if args.upstream is None and (args.tokenizer or args.upstream_key or args.upstream_model):
        raise UserError("--tokenizer, --upstream-key and --upstream-model go with --upstream")
    if args.upstream is not None and args.tokenizer is None:
        raise UserError(
            "--upstream needs --tokenizer DIR (the model's tokenizer or model folder): the prompts are built here"
        )
    if args.upstream is not None and args.quantize != "none":
        raise UserError("--quantize applies to a local --model, not to an upstream server")
    if args.upstream is not None and args.lora:
        raise UserError(
            "--lora applies to a local --model; an upstream server serves its own adapters (vLLM's "
            "--lora-modules): choose one with --upstream-model"
        )
    adapters = None
    if args.lora:  # read and checked before the port is taken and the model loads (against it, as it loads)
        from dscoder.infer import lora
        from dscoder.infer.engine import served_name

        adapters = lora.read([_lora_flag(value) for value in args.lora], served_name(args.model))
    listener = bind(args.host, args.port)  # a port in use is one line, before the model loads
    if args.upstream is not None:  # reached, and asked its model and context, before serving
        from dscoder.infer.upstream import UpstreamEngine

        engine = UpstreamEngine.connect(
            args.upstream, args.upstream_key, args.upstream_model, args.tokenizer, args.context
        )
    else:
        engine = _engine(args, adapters)  # its KV cache allocated: one that cannot fit is refused before serving
        log.info("KV cache: %d sequences of up to %d tokens", engine.max_rows, engine.context)
        for adapter in engine.adapters.values():
            log.info("LoRA adapter %s: %s (%d layers)", adapter.name, adapter.folder, len(adapter.layers))
    serve(
        engine,
        listener,
        api_key=args.api_key,
        max_batch=args.max_batch,
        limits=ServeLimits(
            max_tokens=args.max_tokens, infill_window=args.infill_window, max_prompt_ms=args.max_prompt_ms
        ),
    )
    return 0


QUANTIZE = {"none": None, "int8": 8, "int4": 4}  # --quantize: weight bits


def _lora_flag(value: str) -> tuple[str, Path]:
    """`--lora NAME=DIR` as (name, folder)."""
    name, sep, folder = value.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise UserError(
            f"--lora {value}: expected NAME=DIR (a name for requests' `model` and a PEFT LoRA adapter folder)"
        )
    return name.strip(), Path(folder.strip())


def quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        default="none",
        choices=list(QUANTIZE),
        help="quantize the weights as the model loads (a folder from `dscoder model quantize` needs no flag)",
    )


def _model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", type=Path, required=required, help="model folder (ours or a released DeepSeek-Coder one)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: as saved)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    quantize_flag(p)


def _generation_flags(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument(
        "--max-new-tokens", type=setting(SamplingParams, "max_new_tokens"), default=128, help="most tokens generated"
    )
    p.add_argument(
        "--temperature",
        type=setting(SamplingParams, "temperature"),
        default=0.0,
        help="sampling temperature (0: greedy)",
    )
    p.add_argument("--top-p", type=setting(SamplingParams, "top_p"), default=1.0, help="nucleus sampling mass")
    p.add_argument(
        "--top-k",
        type=setting(SamplingParams, "top_k"),
        default=0,
        help="sample among the k most likely tokens (0: all)",
    )
    p.add_argument("--seed", type=setting(SamplingParams, "seed"), help="sampling seed")
    p.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop sequence, trimmed from the output (repeatable)"
    )
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--show-prompt", action="store_true", help="print the exact prompt text first")


def add_commands(groups) -> None:
    p = groups.add_parser(
        "complete",
        help="continue a prompt (base models stop at EOS)",
        description="Plain completion: the prompt after BOS. A prompt longer than the "
        "context is cut from the left, with a warning.",
        example='dscoder complete --model runs/pretrain/final "def quick_sort(arr):"',
    )
    p.add_argument("prompt", metavar="PROMPT", help="text to continue ('-' reads standard input)")
    _generation_flags(p)
    p.set_defaults(func=cmd_complete)

    p = groups.add_parser(
        "infill",
        help="fill in the middle between a prefix and a suffix",
        description="Insertion with the released FIM layout: --prefix/--suffix, or "
        "--file PATH --line N [--column C] to insert at a cursor in a real file.",
        example="dscoder infill --model runs/pretrain/final --file app.py --line 12",
    )
    p.add_argument("--prefix", help="text before the hole")
    p.add_argument("--suffix", help="text after the hole")
    p.add_argument("--file", type=Path, help="file to insert into")
    p.add_argument("--line", type=number(int, AT_LEAST_ONE), help="cursor line (1-based)")
    p.add_argument("--column", type=number(int, NON_NEGATIVE), help="cursor column (0-based; default: end of the line)")
    _generation_flags(p)
    p.set_defaults(func=cmd_infill)

    p = groups.add_parser(
        "repo-complete",
        help="complete a file with its repository's dependencies as context",
        description="Repository-level completion: the target file's dependencies in "
        "dependency order with #path headers, fitted to the context, then the file up to the "
        "cursor (as FIM when text follows the cursor).",
        example="dscoder repo-complete --model runs/pretrain/final --repo ~/src/app --file app/main.py --line 20",
    )
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    p.add_argument("--file", required=True, help="file to complete (inside the repository)")
    p.add_argument("--line", type=number(int, AT_LEAST_ONE), help="cursor line (default: the end of the file)")
    p.add_argument("--column", type=number(int, NON_NEGATIVE), help="cursor column (default: the end of the line)")
    _generation_flags(p)
    p.set_defaults(func=cmd_repo_complete)

    p = groups.add_parser(
        "chat",
        help="chat with an instruct model in the terminal",
        description="Multi-turn chat with the released template (instruct models stop "
        "at <|EOT|>); --message for one exchange.",
        example='dscoder chat --model runs/instruct/final --message "Write a function that reverses a list."',
    )
    p.add_argument("--message", help="one message to answer, then exit")
    p.add_argument("--system", help="system message (default: the released default system prompt)")
    _generation_flags(p)
    p.set_defaults(func=cmd_chat)

    p = groups.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (completions with suffix, chat, /infill)",
        description="Serve a model folder over HTTP: /v1/models, /v1/completions (suffix "
        "rendered as FIM), /v1/chat/completions, llama.cpp's /completion, /infill, /tokenize, "
        "/detokenize, /props, /health. With --upstream, another OpenAI-compatible server (vLLM, "
        "llama.cpp) generates and dscoder builds the prompts (docs/serving.md).",
        example="dscoder serve --model runs/instruct/final --port 8000\n"
        "dscoder serve --model runs/instruct/final --lora sql=runs/sql-lora --lora py=runs/py-lora\n"
        "dscoder serve --upstream http://127.0.0.1:8001/v1 --tokenizer MODEL_DIR --port 8000",
    )
    _model_flags(p, required=False)
    p.add_argument(
        "--lora",
        action="append",
        metavar="NAME=DIR",
        help="serve a PEFT LoRA adapter of --model under NAME (repeatable): a request's `model` picks it, "
        "and requests for different adapters share one batch (docs/inference.md)",
    )
    p.add_argument(
        "--upstream",
        help="an OpenAI-compatible server's base URL (e.g. http://127.0.0.1:8001/v1) that "
        "generates, instead of --model",
    )
    p.add_argument("--upstream-key", help="the upstream server's API key")
    p.add_argument("--upstream-model", help="the model name to ask the upstream for (default: its only model)")
    p.add_argument("--tokenizer", type=Path, help="with --upstream: the model's tokenizer or model folder")
    p.add_argument(
        "--context",
        type=number(int, AT_LEAST_ONE),
        help="tokens of one sequence, prompt and answer (default: the model's context, lowered to what "
        "--max-batch sequences' keys and values fit in memory; with --upstream: what the upstream says, "
        "else --tokenizer's config.json)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=PORT, default=8000, help="port")
    p.add_argument("--api-key", help="require this key as 'Authorization: Bearer KEY'")
    p.add_argument("--max-batch", type=number(int, AT_LEAST_ONE), default=8, help="most sequences generated together")
    p.add_argument(
        "--max-tokens",
        type=number(int, AT_LEAST_ONE),
        default=1024,
        help="most new tokens one request may ask for; chat and /infill requests that give no limit get this many",
    )
    p.add_argument(
        "--infill-window",
        type=number(int, AT_LEAST_ONE),
        default=2048,
        help="most tokens of the current file an insertion keeps around the cursor (llama.cpp's n_batch; "
        "three quarters before it); repository context fills the rest of the context",
    )
    p.add_argument(
        "--max-prompt-ms",
        type=number(int, AT_LEAST_ONE),
        help="for insertions that give no t_max_prompt_ms: milliseconds their prompt may take to compute "
        "at the measured speed; the suffix's far lines and uncached context files are left out to meet it "
        "(default: no limit; llama.vim sends 500)",
    )
    p.set_defaults(func=cmd_serve)
