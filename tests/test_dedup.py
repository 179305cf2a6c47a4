"""MinHash signatures, LSH clustering and survivors."""

import random

import numpy as np
import pytest

from dscoder.data.dedup import DedupConfig, EMPTY, band_keys, cluster, estimated_jaccard, signature, text_digest
from dscoder.data.ngrams import shingles

from conftest import STDLIB

CFG = DedupConfig()


def true_jaccard(a, b):
    sa, sb = set(shingles(a, 5).tolist()), set(shingles(b, 5).tolist())
    return len(sa & sb) / len(sa | sb)


def edit_lines(text, fraction, rng):
    lines = text.splitlines()
    for i in rng.sample(range(len(lines)), int(len(lines) * fraction)):
        lines[i] = f"changed_{i} = {rng.random()}"
    return "\n".join(lines)


def test_signature_estimates_jaccard():
    rng = random.Random(0)
    base = (STDLIB / "json" / "decoder.py").read_text()
    for fraction in (0.02, 0.1, 0.3, 0.6):
        other = edit_lines(base, fraction, rng)
        estimate = estimated_jaccard(signature(base, CFG), signature(other, CFG))
        assert abs(estimate - true_jaccard(base, other)) < 0.08, fraction


def test_signature_is_deterministic_and_empty_texts_are_marked():
    text = (STDLIB / "json" / "encoder.py").read_text()
    assert np.array_equal(signature(text, CFG), signature(text, CFG))
    assert (signature("  ;; ", CFG) == EMPTY).all()
    assert signature("one two", CFG).dtype == np.uint32


def run_cluster(texts):
    sigs = np.stack([signature(t, CFG) for t in texts])
    empty = sigs[:, 0] == EMPTY
    digests = np.frombuffer(b"".join(text_digest(t) for t in texts), dtype=np.uint8).reshape(-1, 16)
    return cluster(len(texts), digests, lambda b: band_keys(sigs, CFG, b),
                   lambda idx: sigs[idx], empty, CFG)


def repo_text(files):
    return "".join(f"#{p}\n{t}" for p, t in files)


def test_forks_go_unrelated_repositories_sharing_a_vendored_file_stay():
    rng = random.Random(1)
    vendored = ("vendor/six.py", (STDLIB / "json" / "scanner.py").read_text())
    original = repo_text([("a.py", (STDLIB / "email" / "feedparser.py").read_text()),
                          ("b.py", (STDLIB / "email" / "generator.py").read_text()), vendored])
    fork = edit_lines(original, 0.03, rng)
    unrelated = repo_text([("x.py", (STDLIB / "asyncio" / "locks.py").read_text()),
                           ("y.py", (STDLIB / "asyncio" / "queues.py").read_text()), vendored])
    copy = original
    roots, similarity = run_cluster([original, unrelated, fork, copy, "", "   "])
    assert list(roots[:4]) == [0, 1, 0, 0]  # the fork and the copy go; the first one survives
    assert similarity[3] == 1.0 and 0.7 <= similarity[2] < 1.0
    assert roots[4] == 4 and roots[5] == 5  # texts without words are never near-matched


def test_survivor_is_the_earliest_in_input_order():
    text = (STDLIB / "json" / "decoder.py").read_text()
    roots, _ = run_cluster([(STDLIB / "json" / "tool.py").read_text(), edit_lines(text, 0.02, random.Random(2)), text])
    assert list(roots) == [0, 1, 1]


def test_bands_must_fit_the_signature():
    from dscoder.data.dedup import check
    from dscoder.errors import UserError

    with pytest.raises(UserError, match="exceeds num_perm"):
        check(DedupConfig(num_perm=64, bands=10, rows=10))
