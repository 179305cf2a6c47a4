"""Token caches, packing and mixing."""

import json

import numpy as np
import pytest

from dscoder import tokenizer as tokenizer_lib
from dscoder.train import dataset
from dscoder.train.fim import FIMConfig


def cache(small_corpus, trained_tokenizer_dir, tmp_path, fim_rate=0.5, seed=0):
    tok = tokenizer_lib.load(trained_tokenizer_dir)
    cfg = dataset.DataConfig(seq_len=64, eval_fraction=0.05)
    folder = dataset.corpus_cache(str(small_corpus), tok, FIMConfig(rate=fim_rate), seed, cfg, tmp_path)
    return tok, folder


def test_documents_are_bos_text_eos_and_the_cache_is_reused(small_corpus, trained_tokenizer_dir, tmp_path):
    tok, folder = cache(small_corpus, trained_tokenizer_dir, tmp_path, fim_rate=0.0)
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r")
    assert meta["dtype"] == "uint16" and len(tokens) == meta["tokens"]
    assert tokens[0] == tok.bos_token_id
    assert (tokens == tok.bos_token_id).sum() == (tokens == tok.eos_token_id).sum() == meta["documents"]
    first_doc = tokens[1 : int(np.argmax(tokens == tok.eos_token_id))]
    from dscoder.data import corpus

    texts = list(corpus.iter_texts(small_corpus))
    assert tok.decode(first_doc.tolist()) in texts
    mtime = (folder / "tokens.bin").stat().st_mtime_ns
    _, again = cache(small_corpus, trained_tokenizer_dir, tmp_path, fim_rate=0.0)
    assert again == folder and (folder / "tokens.bin").stat().st_mtime_ns == mtime
    _, other = cache(small_corpus, trained_tokenizer_dir, tmp_path, fim_rate=0.5)
    assert other != folder  # a different FIM setting is a different cache


def test_every_document_is_rewritten_at_fim_rate_one(small_corpus, trained_tokenizer_dir, tmp_path):
    tok, folder = cache(small_corpus, trained_tokenizer_dir, tmp_path, fim_rate=1.0)
    tokens = np.memmap(folder / "tokens.bin", dtype="uint16", mode="r")
    starts = np.flatnonzero(tokens == tok.bos_token_id)
    assert (tokens[starts + 1] == tok.convert_tokens_to_ids("<｜fim▁begin｜>")).all()


def test_packing_windows_and_the_held_out_split(small_corpus, trained_tokenizer_dir, tmp_path):
    _, folder = cache(small_corpus, trained_tokenizer_dir, tmp_path)
    f = dataset.TokenFile(folder)
    train, held = f.windows(64, 0.05, "train"), f.windows(64, 0.05, "eval")
    assert len(train) + len(held) == (len(f.tokens) - 1) // 64
    assert not set(train) & set(held) and 0.03 < len(held) / (len(train) + len(held)) < 0.07
    a, _ = f.window(0, 64)
    b, _ = f.window(1, 64)
    assert a.shape == (65,) and a[-1] == b[0]
    assert np.array_equal(np.concatenate([a[:-1], b]), np.asarray(f.tokens[:129]))


def test_mixture_is_deterministic_weighted_and_rank_sharded(small_corpus, trained_tokenizer_dir, tmp_path):
    _, folder = cache(small_corpus, trained_tokenizer_dir, tmp_path)
    files = [dataset.TokenFile(folder), dataset.TokenFile(folder)]

    def stream(weights, steps=50):
        m = dataset.Mixture(files, weights, 64, seed=1)
        for _ in range(steps):
            m.next_batch(4)
        return m

    a, b = stream([3.0, 1.0]), stream([3.0, 1.0])
    assert a.state == b.state
    share = a.state["per_source"][0] / a.state["drawn"]
    assert 0.65 < share < 0.85

    whole = dataset.Mixture(files, [1, 1], 64, seed=2).next_batch(4, 0, 1)[0]
    halves = [dataset.Mixture(files, [1, 1], 64, seed=2).next_batch(2, r, 2)[0] for r in (0, 1)]
    assert np.array_equal(whole, np.concatenate(halves))

    resumed = dataset.Mixture(files, [1, 1], 64, seed=3)
    reference = dataset.Mixture(files, [1, 1], 64, seed=3)
    for _ in range(5):
        reference.next_batch(4)
    resumed.state = json.loads(json.dumps(reference.state))
    assert np.array_equal(resumed.next_batch(4)[0], reference.next_batch(4)[0])


def test_source_weights_parse():
    assert dataset.parse_source("runs/corpus:0.5") == ("runs/corpus", 0.5)
    assert dataset.parse_source("runs/corpus") == ("runs/corpus", 1.0)


def fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate, seq_len=128):
    tok = tokenizer_lib.load(trained_tokenizer_dir)
    fim = FIMConfig(rate=rate, split="line", max_chars=300, fit_windows=True)
    cfg = dataset.DataConfig(seq_len=seq_len, eval_fraction=0.05)
    return tok, dataset.corpus_cache(str(small_corpus), tok, fim, 0, cfg, tmp_path)


def pieces_of(tokens, tok):
    """(start, end) of every BOS ... EOS piece, end inclusive."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    ends = np.flatnonzero(tokens == eos)
    spans = []
    for start in np.flatnonzero(tokens == bos):
        spans.append((int(start), int(ends[np.searchsorted(ends, start)])))
    return spans


def test_fitted_pieces_never_cross_a_window_and_padding_is_not_trained(small_corpus, trained_tokenizer_dir, tmp_path):
    tok, folder = fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate=0.5)
    f = dataset.TokenFile(folder)
    tokens, mask = np.asarray(f.tokens), np.asarray(f.mask)
    spans = pieces_of(tokens, tok)
    assert len(spans) > 100
    assert all(start // 128 == end // 128 for start, end in spans)
    fim_begin = tok.convert_tokens_to_ids("<｜fim▁begin｜>")
    assert 0.3 < np.mean([tokens[s + 1] == fim_begin for s, _ in spans]) < 0.7
    inside = np.zeros(len(tokens), dtype=bool)
    for start, end in spans:
        inside[start : end + 1] = True
    assert np.array_equal(mask.astype(bool), inside)  # everything else is padding, out of the loss
    assert (tokens[~inside] == tok.eos_token_id).all() and 0 < (~inside).mean() < 0.15
    _, other = fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate=0.5, seq_len=256)
    assert other != folder  # the layout depends on the window length


def test_fitted_pieces_keep_every_document_whole(small_corpus, trained_tokenizer_dir, tmp_path):
    from dscoder.data import corpus

    tok, folder = fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate=0.0)
    tokens = np.asarray(dataset.TokenFile(folder).tokens)
    texts = list(corpus.iter_texts(small_corpus))
    text = "".join(tok.decode(tokens[s + 1 : e].tolist()) for s, e in pieces_of(tokens, tok))
    assert text == "".join(texts)


def test_fitted_pieces_need_room_for_a_piece(trained_tokenizer_dir):
    from dscoder.errors import UserError

    tok = tokenizer_lib.load(trained_tokenizer_dir)
    with pytest.raises(UserError, match="at least 32 tokens"):
        dataset.pretraining_encoder(tok, FIMConfig(fit_windows=True), 0, "x", seq_len=16)


TRICKY_SOURCE = "".join(
    [
        "import os\n\n\n\ndef f(x):\n    return x  \n\n",  # blank lines, trailing spaces
        "\tif x:\n\t\tpass\n",  # tabs
        "name = 'é ü 日本語 🙂🙃'\n",  # characters of several bytes
        "a = 1\r\nb = 2\r\n",  # Windows line ends
        "n = 1234567890\n",  # digits
        "s = '" + "z" * 400 + "'\n",  # a line longer than a piece
        "x  ü  é\n\t\tÄpfel = 1\na  本\n",  # runs of whitespace before letters that do not merge with it
        "t = '" + "q  ü\t\tÄ  本 " * 60 + "'\n",  # and a line longer than a window made of them
    ]
    * 6
)


@pytest.mark.parametrize("split", ["line", "char"])
@pytest.mark.parametrize("vocabulary", ["trained_tokenizer_dir", "deepseek_tokenizer_dir"])
def test_fitted_pieces_hold_the_tokens_their_text_encodes_to(vocabulary, split, request, monkeypatch):
    # Pieces are cut out of one encoding of the whole document; each must hold exactly what the
    # tokenizer gives for the piece's own text (FIM rearrangement included), as at inference.
    tok = tokenizer_lib.load(request.getfixturevalue(vocabulary))
    fim = FIMConfig(rate=0.7, spm_rate=0.3, split=split, max_chars=200, fit_windows=True)
    texts = [TRICKY_SOURCE, "x = 1\n", TRICKY_SOURCE[::-1]]
    cut = dataset.pretraining_encoder(tok, fim, 0, "x", seq_len=96)(texts)
    monkeypatch.setattr(dataset._Tokens, "_at", lambda self, pos: None)  # every piece tokenized anew
    encoded = dataset.pretraining_encoder(tok, fim, 0, "x", seq_len=96)(texts)
    assert cut == encoded
    ids = np.array([i for doc, _ in cut for i in doc])
    spans = pieces_of(ids, tok)
    fim_begin = tok.convert_tokens_to_ids("<｜fim▁begin｜>")
    assert len(spans) > 20 and 0.3 < np.mean([ids[s + 1] == fim_begin for s, _ in spans]) < 0.95


def test_only_line_starts_where_a_token_starts_are_cut_from_the_document_encoding():
    from types import SimpleNamespace

    # Byte-level tokens can share or overlap character offsets: "\n" + one character in two
    # tokens that both start at it, then one reaching from "c" past the next line start.
    text = "a\nbc\nd"
    encoding = SimpleNamespace(ids=[1, 2, 3, 4, 5, 6], offsets=[(0, 1), (1, 2), (2, 3), (2, 3), (3, 6), (5, 6)])
    tokens = dataset._Tokens(text, encoding, backend=None, sentinels=[])
    assert [tokens._at(pos) for pos in range(len(text) + 1)] == [0, None, 2, None, None, None, 6]


def test_a_damaged_cache_is_built_again(small_corpus, trained_tokenizer_dir, tmp_path, caplog):
    tok, folder = fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate=0.5)
    tokens = (folder / "tokens.bin").read_bytes()
    mask = (folder / "mask.bin").read_bytes()
    with open(folder / "tokens.bin", "r+b") as f:  # cut short, and not a whole number of tokens
        f.truncate(1001)
    with caplog.at_level("WARNING", logger="dscoder"):
        assert fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate=0.5)[1] == folder
    assert "tokens.bin has 1001 bytes" in caplog.text
    assert (folder / "tokens.bin").read_bytes() == tokens and (folder / "mask.bin").read_bytes() == mask
    (folder / "meta.json").write_text("{not json")
    fitted_cache(small_corpus, trained_tokenizer_dir, tmp_path, rate=0.5)
    assert dataset.TokenFile(folder).tokens.tobytes() == tokens
