"""Shared fixtures: the real DeepSeek-Coder vocabulary from ../shared and a small trained one."""

from __future__ import annotations

import sysconfig
from collections import Counter
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GGUF = SHARED / "reference" / "deepseek-coder-vocab" / "ggml-vocab-deepseek-coder.gguf"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (the shared reference data sits beside the repository)")
    return path


@pytest.fixture(scope="session")
def deepseek_tokenizer_dir(tmp_path_factory) -> Path:
    """The released vocabulary, imported from llama.cpp's GGUF file."""
    from dscoder import tokenizer

    need_shared(GGUF)
    tok, facts = tokenizer.from_gguf(GGUF)
    out = tmp_path_factory.mktemp("deepseek-tokenizer")
    tokenizer.save(tok, out, eos_token=facts["eos_token"], add_bos_token=facts["add_bos_token"])
    return out


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory) -> Path:
    """A 2,000-token vocabulary learned on two standard-library packages (a few seconds)."""
    from dscoder import tokenizer
    from dscoder.data.sources import read_texts

    texts = read_texts([STDLIB / "json", STDLIB / "email", STDLIB / "logging"], Counter())
    tok = tokenizer.train(texts, vocab_size=2000, show_progress=False)
    out = tmp_path_factory.mktemp("trained-tokenizer")
    tokenizer.save(tok, out)
    return out
