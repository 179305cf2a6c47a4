"""`dscoder quickstart` (what `make demo` runs): the pipeline on this machine's own Python code.

Stages, each kept in its own folder under the output folder and reused when run again:
1. tokenizer: byte-level BPE learned on the installed Python code (standard library and
   site-packages);
2. model: a `tiny` preset initialised with that tokenizer and saved as a Hugging Face folder;
3. check: the folder loaded back through plain `transformers` and asked for a completion.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from dscoder import model, tokenizer
from dscoder.artifacts import output_dir, read_manifest, write_manifest

log = logging.getLogger("dscoder")

VOCAB_SIZE = 8000
PRESET = "tiny"
PROMPT = "def fibonacci(n):\n"


def _done(folder: Path) -> bool:
    return read_manifest(folder) is not None if folder.is_dir() else False


def run(out: Path, force: bool = False, max_bytes: int = 16_000_000) -> dict:
    """Run every stage not finished yet; returns where things are and how long each took."""
    from dscoder.data.sources import installed_python_roots, read_texts

    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    tok_dir, model_dir = out / "tokenizer", out / "model-untrained"

    start = time.perf_counter()
    if _done(tok_dir):
        log.info("[1/3] tokenizer: reusing %s", tok_dir)
    else:
        roots = installed_python_roots()
        log.info("[1/3] tokenizer: learning %d tokens on Python code in %s", VOCAB_SIZE,
                 ", ".join(map(str, roots)))
        skips: Counter = Counter()
        texts = read_texts(roots, skips, max_bytes)
        tok = tokenizer.train(texts, VOCAB_SIZE, length=len(texts))
        with output_dir(tok_dir, force=True) as tmp:
            tokenizer.save(tok, tmp)
            write_manifest(tmp, "tokenizer", method="train", inputs=[str(r) for r in roots],
                           config={"vocab_size": VOCAB_SIZE, "max_bytes": max_bytes},
                           files=len(texts), skipped=dict(skips))
    seconds["tokenizer"] = time.perf_counter() - start

    start = time.perf_counter()
    if _done(model_dir):
        log.info("[2/3] model: reusing %s", model_dir)
    else:
        log.info("[2/3] model: initialising the %r preset", PRESET)
        tok = tokenizer.load(tok_dir)
        hf_cfg = model.hf_config(model.get_preset(PRESET).config, tok)
        with output_dir(model_dir, force=True) as tmp:
            model.save(tmp, hf_cfg, tok_dir, model.build(hf_cfg))
            write_manifest(tmp, "model", method="init", preset=PRESET, tokenizer=str(tok_dir))
    seconds["model"] = time.perf_counter() - start

    start = time.perf_counter()
    log.info("[3/3] check: loading %s with transformers.AutoModelForCausalLM", model_dir)
    completion = complete_with_transformers(model_dir, PROMPT)
    seconds["check"] = time.perf_counter() - start

    params = model.count_parameters(model.load_config(model_dir))["total"]
    print(f"\nprompt:     {PROMPT!r}\ncompletion: {completion!r}")
    print("(the model is untrained, so the completion is noise: it shows the folder loads and runs)")
    print(f"\ntokenizer  {tok_dir}\nmodel      {model_dir} ({params / 1e6:.1f}M parameters)")
    print("timings    " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return {"tokenizer": tok_dir, "model": model_dir, "completion": completion, "seconds": seconds}


def complete_with_transformers(folder: Path, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy completion through plain transformers, as any user of the folder would do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    net = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        output = net.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=tok.eos_token_id)
    return tok.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
