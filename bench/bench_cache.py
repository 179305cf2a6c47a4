"""Token cache build speed with FIM pieces fitted to the training windows (`fim.fit_windows`).

On the Python code installed on this machine, with a BPE vocabulary trained on it (or the
released DeepSeek-Coder vocabulary from ../shared's GGUF file with --deepseek), the same documents and FIM
settings as the quickstart, three encoders over the same texts:
- fitted, pieces cut from one batched encoding of each document where their cuts fall at line
  starts (dscoder);
- fitted, every piece tokenized again on its own (the plain way, and dscoder's fallback for a
  cut elsewhere);
- pieces laid end to end, tokenized in batches (no fitting; the ceiling).
The first two must give identical tokens; MB/s and ratios are printed.

    python bench/bench_cache.py [--mb 10] [--deepseek] [--split line|char]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_data import load_corpus
from bench_generate import SHARED as GGUF  # the released vocabulary in ../shared

from dscoder import tokenizer as tokenizer_lib
from dscoder.train import dataset
from dscoder.train.fim import FIMConfig


def vocabulary(texts: list[str], deepseek: bool, folder: Path):
    if deepseek:
        if not GGUF.is_file():
            sys.exit(f"--deepseek needs {GGUF}")
        tok, facts = tokenizer_lib.from_gguf(GGUF)
        tokenizer_lib.save(tok, folder, eos_token=facts["eos_token"], add_bos_token=facts["add_bos_token"])
    else:
        tokenizer_lib.save(tokenizer_lib.train(texts, 8000, show_progress=False), folder)
    return tokenizer_lib.load(folder)


def run(label: str, texts: list[str], encode, megabytes: float, batch: int = 256):
    start = time.perf_counter()
    out = [item for i in range(0, len(texts), batch) for item in encode(texts[i : i + batch])]
    seconds = time.perf_counter() - start
    print(f"  {label:52s} {megabytes / seconds:6.2f} MB/s  ({seconds:.1f} s)")
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="megabytes of installed Python code")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--deepseek", action="store_true", help="the released vocabulary from ../shared")
    parser.add_argument("--split", choices=("line", "char"), default="line", help="where FIM holes start and end")
    args = parser.parse_args()

    files, total = load_corpus(args.mb)
    texts = [f.text for _, f in files]
    megabytes = total / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tok = vocabulary(texts, args.deepseek, Path(tmp))
    print(
        f"{len(texts)} files, {megabytes:.1f} MB, windows of {args.seq_len} tokens, "
        f"{'released' if args.deepseek else 'trained 8,000-token'} vocabulary"
    )
    fim = FIMConfig(rate=0.5, split=args.split, max_chars=1000, fit_windows=True)

    def encoder(cfg: FIMConfig):
        return dataset.pretraining_encoder(tok, cfg, 0, "bench", args.seq_len)

    cut, ours = run("fitted, cut from one encoding per document (dscoder)", texts, encoder(fim), megabytes)
    cut_inside = dataset._Tokens._at
    dataset._Tokens._at = lambda self, pos: None
    try:
        again, plain = run("fitted, each piece tokenized again", texts, encoder(fim), megabytes)
    finally:
        dataset._Tokens._at = cut_inside
    _, end_to_end = run(
        "laid end to end, batched (no fitting)",
        texts,
        encoder(FIMConfig(rate=0.5, split=args.split, max_chars=1000)),
        megabytes,
    )
    print(f"identical tokens: {cut == again}")
    print(f"dscoder vs each piece again: {plain / ours:.2f}x; time vs laid end to end: {ours / end_to_end:.2f}x")


if __name__ == "__main__":
    main()
