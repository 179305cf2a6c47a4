"""The FIM transform: properties a user relies on."""

import random

import pytest

from dscoder import formats
from dscoder.train.fim import FIMConfig, apply

TEXT = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


def parse_psm(doc):
    assert doc.startswith(formats.FIM_BEGIN)
    prefix, rest = doc[len(formats.FIM_BEGIN) :].split(formats.FIM_HOLE)
    suffix, middle = rest.split(formats.FIM_END)
    return prefix, middle, suffix


def parse_spm(doc):
    assert doc.startswith(formats.FIM_BEGIN + formats.FIM_HOLE)
    suffix, prefix_middle = doc[len(formats.FIM_BEGIN + formats.FIM_HOLE) :].split(formats.FIM_END)
    return suffix, prefix_middle


def test_psm_recovers_the_document():
    rng = random.Random(0)
    for _ in range(200):
        doc = apply(TEXT, FIMConfig(rate=1.0), rng)
        prefix, middle, suffix = parse_psm(doc)
        assert prefix + middle + suffix == TEXT


def test_spm_recovers_the_document():
    rng = random.Random(1)
    for _ in range(100):
        suffix, prefix_middle = parse_spm(apply(TEXT, FIMConfig(rate=1.0, spm_rate=1.0), rng))
        assert prefix_middle + suffix == TEXT


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_the_rate_holds(rate):
    rng = random.Random(2)
    n = 4000
    fim = sum(apply(TEXT, FIMConfig(rate=rate), rng) != TEXT for _ in range(n))
    assert abs(fim / n - rate) < 4 * (rate * (1 - rate) / n) ** 0.5 + 1e-9


def test_spm_share_and_determinism():
    docs = [apply(TEXT, FIMConfig(rate=1.0, spm_rate=0.3), random.Random(i)) for i in range(2000)]
    spm = sum(d.startswith(formats.FIM_BEGIN + formats.FIM_HOLE) for d in docs) / len(docs)
    assert 0.26 < spm < 0.34
    assert docs[:50] == [apply(TEXT, FIMConfig(rate=1.0, spm_rate=0.3), random.Random(i)) for i in range(50)]


def test_split_points_cover_the_whole_document():
    rng = random.Random(3)
    prefixes = {len(parse_psm(apply(TEXT, FIMConfig(rate=1.0), rng))[0]) for _ in range(3000)}
    assert min(prefixes) == 0 and max(prefixes) == len(TEXT)


def test_sentinels_are_single_tokens(trained_tokenizer_dir):
    from dscoder import tokenizer

    tok = tokenizer.load(trained_tokenizer_dir)
    doc = apply(TEXT, FIMConfig(rate=1.0), random.Random(4))
    ids = tok.encode(doc, add_special_tokens=False)
    for sentinel in (formats.FIM_BEGIN, formats.FIM_HOLE, formats.FIM_END):
        assert ids.count(tok.convert_tokens_to_ids(sentinel)) == 1
    assert tok.decode(ids) == doc


def test_pieces_keep_the_text_and_respect_the_limit():
    from dscoder.train.fim import pieces

    text = "".join(f"line {i}\n" for i in range(200))
    parts = pieces(text, 100)
    assert "".join(parts) == text and all(len(p) <= 100 for p in parts)
    assert pieces(text, 0) == [text]


def test_line_level_holes_are_whole_lines():
    starts = {0} | {i + 1 for i, ch in enumerate(TEXT) if ch == "\n"}
    rng = random.Random(5)
    for _ in range(300):
        prefix, middle, suffix = parse_psm(apply(TEXT, FIMConfig(rate=1.0, split="line"), rng))
        assert prefix + middle + suffix == TEXT and middle
        assert len(prefix) in starts and len(prefix) + len(middle) in starts
