"""int8 quality against llama.cpp q8_0 on the same weights: how often each picks the dense
model's most likely next token, at every position of held-out text (the standard library's
http and urllib packages, 48 windows of 64 tokens, as the tests' held-out perplexity), and their held-out perplexity ratios.

    python bench/bench_int8_quality.py MODEL_DIR [MODEL_DIR ...]

MODEL_DIR: dense model folders (briefly trained tiny models are enough, e.g. `dscoder train
pretrain --preset tiny --max-steps 30 --seed N`). llama.cpp runs through llama-cpp-python on
`dscoder model export-gguf --type q8_0` of the same folder.
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from dscoder import export, quantize
from dscoder.evaluate.heldout import heldout_windows
from dscoder.infer.engine import Engine
from dscoder.texts import read_texts

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def windows(engine: Engine) -> list[list[int]]:
    texts = read_texts([STDLIB / "http", STDLIB / "urllib"], Counter())
    return heldout_windows(engine, texts, 64, max_windows=48)


@torch.inference_mode()
def scores(engine: Engine, wins: list[list[int]]) -> list[torch.Tensor]:
    return [engine.model(torch.tensor([w])).logits[0, :-1].float() for w in wins]


def summary(logits: list[torch.Tensor], wins: list[list[int]], reference: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement with the reference choices, perplexity of the windows' next tokens)."""
    top = torch.cat([s.argmax(-1) for s in logits])
    nll = torch.cat(
        [torch.nn.functional.cross_entropy(s, torch.tensor(w[1:]), reduction="none") for s, w in zip(logits, wins)]
    )
    return float((top == reference).float().mean()), float(nll.mean().exp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args()
    from llama_cpp import Llama

    for folder in args.models:
        dense = Engine.load(folder)
        wins = windows(dense)
        reference_logits = scores(dense, wins)
        reference = torch.cat([s.argmax(-1) for s in reference_logits])
        _, dense_ppl = summary(reference_logits, wins, reference)
        ours = Engine.load(folder)
        quantize.quantize_model(ours.model, 8, None)
        ours_agree, ours_ppl = summary(scores(ours, wins), wins, reference)
        with tempfile.TemporaryDirectory() as work:
            gguf = Path(work) / "q8_0.gguf"
            export.export(folder, gguf, "q8_0")
            llm = Llama(model_path=str(gguf), n_ctx=128, logits_all=True, verbose=False)
            theirs = []
            for w in wins:
                llm.reset()
                llm.eval(w)
                theirs.append(torch.from_numpy(np.array(llm.scores[: len(w) - 1])).float())
        their_agree, their_ppl = summary(theirs, wins, reference)
        print(
            f"{folder}: {len(reference)} positions; picks the dense model's token: dscoder int8 {ours_agree:.4f}, "
            f"llama.cpp q8_0 {their_agree:.4f}; perplexity / dense: {ours_ppl / dense_ppl - 1:+.3%}, "
            f"{their_ppl / dense_ppl - 1:+.3%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
