"""The DeepSeek-Coder tokenizer: byte-level BPE with the released pre-tokenizer and added tokens.

Two ways to make one, both written as Hugging Face tokenizer files that
`transformers.AutoTokenizer.from_pretrained` loads offline:
- `train`: learn a BPE vocabulary on code with the `tokenizers` library (paper section 3.1);
- `from_gguf`: rebuild the released vocabulary from llama.cpp's GGUF vocabulary file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from dscoder import artifacts, formats
from dscoder.errors import UserError

MODEL_MAX_LENGTH = 16384  # the released context (max_position_embeddings)
BYTE_ALPHABET = 256
# Pre-tokenizers whose GGUF name we can rebuild exactly.
SUPPORTED_GGUF_PRE = ("deepseek-coder",)


def deepseek_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The released pre-tokenizer: line breaks, letter runs, punctuation runs, CJK runs and single
    digits are split off in that order, then bytes are mapped (no GPT-2 regex)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\r\n]"), "isolated"),
            pre_tokenizers.Split(Regex(r"\s?\p{L}+"), "isolated"),
            pre_tokenizers.Split(Regex(r"\s?\p{P}+"), "isolated"),
            pre_tokenizers.Split(Regex("[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"), "isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _finish(tokenizer: Tokenizer, added: list[AddedToken]) -> Tokenizer:
    """Attach the pre-tokenizer, decoder and BOS post-processor, then the added tokens."""
    tokenizer.pre_tokenizer = deepseek_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(added)
    bos_id = tokenizer.token_to_id(formats.BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{formats.BOS}:0 $A:0",
        pair=f"{formats.BOS}:0 $A:0 {formats.BOS}:1 $B:1",
        special_tokens=[(formats.BOS, bos_id)],
    )
    return tokenizer


def _deepseek_added_tokens() -> list[AddedToken]:
    return [AddedToken(t.content, special=t.special, normalized=False) for t in formats.ADDED_TOKENS]


def train(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None, show_progress: bool = True
) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of `vocab_size` tokens (byte alphabet included) on
    `texts`; the DeepSeek added tokens follow it, so they take ids vocab_size..vocab_size+8."""
    if vocab_size < BYTE_ALPHABET:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: a byte-level vocabulary needs at least "
            f"{BYTE_ALPHABET} tokens before the {len(formats.ADDED_TOKENS)} added ones"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = deepseek_pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return _finish(tokenizer, _deepseek_added_tokens())


def gguf_module():
    """llama.cpp's `gguf` package; a UserError naming the extra when it is not installed."""
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF files need the 'gguf' extra: pip install 'dscoder[gguf]'") from None
    return gguf


def read_gguf(path: str | Path, keep=lambda name: True) -> tuple[dict, list]:
    """(fields kept by `keep`, tensors) of a GGUF file; a UserError for a missing or damaged one."""
    gguf = gguf_module()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
        return {name: field.contents() for name, field in reader.fields.items() if keep(name)}, reader.tensors
    except Exception as exc:  # the gguf reader raises assorted errors on damaged files
        raise UserError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None


def from_gguf(path: str | Path) -> tuple[Tokenizer, dict]:
    """The vocabulary of a llama.cpp GGUF file as a `tokenizers.Tokenizer`, with the facts the
    tokenizer config needs (`eos_token`, `add_bos_token`, `vocab_size`)."""
    fields, _ = read_gguf(path, lambda name: name.startswith("tokenizer.") or name == "llama.vocab_size")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        if key not in fields:
            raise UserError(f"{path}: GGUF file has no {key} (not a BPE vocabulary)")
    if fields["tokenizer.ggml.model"] != "gpt2":
        raise UserError(
            f"{path}: tokenizer model is {fields['tokenizer.ggml.model']!r}, expected byte-level BPE ('gpt2')"
        )
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_GGUF_PRE:
        raise UserError(f"{path}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(SUPPORTED_GGUF_PRE)})")

    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    if len(tokens) != len(types):
        raise UserError(f"{path}: {len(tokens)} tokens but {len(types)} token types")
    # GGUF token types: 1 normal (learned BPE), 3 control (special), 4 user-defined (added).
    vocab = {tok: i for i, (tok, kind) in enumerate(zip(tokens, types)) if kind == 1}
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise UserError(f"{path}: learned tokens are not the first ids of the vocabulary")
    added = [
        AddedToken(tok, special=(kind == 3), normalized=False)
        for tok, kind in zip(tokens[len(vocab) :], types[len(vocab) :])
        if not (tok.startswith("[PAD") and tok.endswith("]"))  # llama.cpp's filler up to the embedding size
    ]
    try:
        merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    except Exception as exc:
        raise UserError(f"{path}: inconsistent vocabulary and merges ({exc})") from None
    tokenizer = _finish(tokenizer, added)
    for i, token in enumerate(added, start=len(vocab)):
        if tokenizer.token_to_id(token.content) != i:
            raise UserError(f"{path}: added token {token.content!r} does not keep its id {i}")
    for token in formats.ADDED_TOKENS:
        if tokenizer.token_to_id(token.content) is None:
            raise UserError(f"{path}: the vocabulary lacks the DeepSeek-Coder token {token.content}")
    eos_id = fields.get("tokenizer.ggml.eos_token_id")
    facts = {
        "eos_token": tokens[eos_id] if isinstance(eos_id, int) and eos_id < len(tokens) else formats.EOS,
        "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", True)),
        "vocab_size": int(fields.get("llama.vocab_size", len(tokens))),
    }
    return tokenizer, facts


def save(
    tokenizer: Tokenizer,
    folder: str | Path,
    eos_token: str = formats.EOS,
    add_bos_token: bool = True,
    model_max_length: int = MODEL_MAX_LENGTH,
) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` (with the chat template) to `folder`,
    created if missing."""
    folder = Path(folder)
    if not add_bos_token:
        tokenizer.post_processor = None
    artifacts.write_text(folder / "tokenizer.json", tokenizer.to_str(pretty=True))
    config = {
        "add_bos_token": add_bos_token,
        "add_eos_token": False,
        "bos_token": formats.BOS,
        "eos_token": eos_token,
        "pad_token": formats.EOS,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": formats.chat_template(),
    }
    artifacts.write_json(folder / "tokenizer_config.json", config)


def load(folder: str | Path):
    """The tokenizer of a tokenizer or model folder, through transformers (offline)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"tokenizer folder not found: {folder}")
    missing = [name for name in artifacts.TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{folder}: no tokenizer files ({' and '.join(missing)} missing; a tokenizer folder is made "
            "by `dscoder tokenizer train` or `dscoder tokenizer import-gguf`)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{folder}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
