"""MinHash signatures, LSH clustering and survivors."""

import random

import numpy as np

from conftest import STDLIB
from dscoder.data.dedup import (
    EMPTY,
    KEY,
    PAIR,
    DedupConfig,
    banding,
    candidate_pairs,
    cluster,
    clusters,
    estimated_jaccard,
    key_records,
    signature,
    text_digest,
)
from dscoder.data.ngrams import shingles

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
    digests = np.frombuffer(b"".join(text_digest(t) for t in texts), dtype=np.uint8).reshape(-1, 16)
    return cluster(sigs, digests, CFG)


def repo_text(files):
    return "".join(f"#{p}\n{t}" for p, t in files)


def test_forks_go_unrelated_repositories_sharing_a_vendored_file_stay():
    rng = random.Random(1)
    vendored = ("vendor/six.py", (STDLIB / "json" / "scanner.py").read_text())
    original = repo_text(
        [
            ("a.py", (STDLIB / "email" / "feedparser.py").read_text()),
            ("b.py", (STDLIB / "email" / "generator.py").read_text()),
            vendored,
        ]
    )
    fork = edit_lines(original, 0.03, rng)
    unrelated = repo_text(
        [
            ("x.py", (STDLIB / "asyncio" / "locks.py").read_text()),
            ("y.py", (STDLIB / "asyncio" / "queues.py").read_text()),
            vendored,
        ]
    )
    copy = original
    roots, similarity = run_cluster([original, unrelated, fork, copy, "", "   "])
    assert list(roots[:4]) == [0, 1, 0, 0]  # the fork and the copy go; the first one survives
    assert similarity[3] == 1.0 and 0.7 <= similarity[2] < 1.0
    assert roots[4] == 4 and roots[5] == 5  # texts without words are never near-matched


def test_survivor_is_the_earliest_in_input_order():
    text = (STDLIB / "json" / "decoder.py").read_text()
    roots, _ = run_cluster([(STDLIB / "json" / "tool.py").read_text(), edit_lines(text, 0.02, random.Random(2)), text])
    assert list(roots) == [0, 1, 1]


def test_the_bands_follow_the_threshold():
    """LSH only proposes the pairs to check, so its bands must propose nearly every pair at the
    threshold, whatever the threshold and the signature length."""
    assert banding(CFG) == (42, 6)
    for threshold in (0.5, 0.7, 0.8, 0.9, 1.0):
        for num_perm in (64, 128, 256):
            bands, rows = banding(DedupConfig(threshold=threshold, num_perm=num_perm))
            assert bands * rows <= num_perm
            assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_forks_just_above_the_threshold_are_found():
    """Pairs whose true Jaccard similarity is 0.72-0.80, above the 0.7 threshold: BigCode's
    25 x 10 bands proposed only three in four of them as candidates."""
    rng = random.Random(4)
    texts, wanted = [], []
    for path in sorted((STDLIB / "email").glob("*.py")) + sorted((STDLIB / "json").glob("*.py")):
        base = path.read_text()
        if base.count("\n") < 60:
            continue
        for fraction in (0.03, 0.04, 0.05, 0.06, 0.07, 0.08):
            fork = edit_lines(base, fraction, rng)
            if 0.72 <= true_jaccard(base, fork) <= 0.80:
                texts += [base, fork]
                wanted.append(len(texts) - 2)
                break
    assert len(wanted) >= 12
    roots, _ = run_cluster(texts)
    found = sum(roots[i + 1] == i for i in wanted)
    assert found >= 0.9 * len(wanted), (found, len(wanted))


def test_pairs_found_by_key_partitions_give_the_same_clusters():
    """The build finds duplicate pairs in parallel tasks, one per range of keys, each seeing only
    its share of the records: the clusters are those of all records at once."""
    rng = random.Random(3)
    base = [(STDLIB / name).read_text() for name in ("json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py")]
    texts = base + [edit_lines(t, 0.03, rng) for t in base] + [base[1], "", "", edit_lines(base[2], 0.05, rng)]
    sigs = np.stack([signature(t, CFG) for t in texts])
    digests = np.frombuffer(b"".join(text_digest(t) for t in texts), dtype=np.uint8).reshape(-1, 16)
    whole = cluster(sigs, digests, CFG)
    records = np.concatenate(
        [key_records(sigs[i : i + 3], digests[i : i + 3], i, CFG) for i in range(0, len(texts), 3)]
    )
    for partitions in (1, 3, 7):
        share = records["hi"] % np.uint64(partitions)
        pairs = [candidate_pairs(records[share == p], lambda idx: sigs[idx], CFG) for p in range(partitions)]
        roots, similarity = clusters(len(texts), reversed(pairs))
        assert np.array_equal(roots, whole[0]) and np.array_equal(similarity, whole[1])
    assert len(set(whole[0].tolist())) < len(texts) - 4  # forks and copies were found
    assert whole[0][9] == 9 and whole[0][10] == 9  # the two empty texts: exact copies of each other


def test_a_sample_joined_through_a_later_one_has_its_similarity():
    """1 matches 2 and 0 matches 2, but 1 does not match 0: 1 is dropped with the similarity of
    the match that joined it, never 0."""
    pairs = np.array([(0, 2, 0.8), (1, 2, 0.75)], dtype=PAIR)
    roots, similarity = clusters(3, [pairs])
    assert list(roots) == [0, 0, 0]
    assert similarity[1] == np.float32(0.75) and similarity[2] == np.float32(0.8)


def test_records_whose_keys_share_their_high_half_are_told_apart():
    """Keys of two bands, or two digests, that share their 64-bit high half (a chance of 2**-64)
    are separate runs, whatever order the records come in."""
    exact = banding(CFG)[0]
    keys = [(0, 5, 0), (1, 5, 0), (exact, 5, 7), (0, 5, 0), (exact, 5, 8), (1, 5, 0), (exact, 5, 7), (2, 9, 0)]
    records = np.zeros(len(keys), dtype=KEY)
    for i, (band, hi, lo) in enumerate(keys):
        records[i] = (band, hi, lo, 7 - i)
    pairs = candidate_pairs(records, lambda idx: np.zeros((len(idx), CFG.num_perm), dtype=np.uint32), CFG)
    assert [(int(a), int(b), float(s)) for a, b, s in pairs] == [(1, 5, 1.0), (2, 6, 1.0), (4, 7, 1.0)]
