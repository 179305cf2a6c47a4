"""Decontamination against real benchmark files."""

import gzip
import json

import pytest

from conftest import SHARED, need_shared
from dscoder.benchmark_files import contaminating_strings
from dscoder.data.decontam import DecontamConfig, build_index, load_index, match, save_index
from dscoder.errors import UserError


@pytest.fixture(scope="module")
def humaneval_index():
    path = need_shared(SHARED / "benchmarks" / "HumanEval.jsonl.gz")
    fmt, strings = contaminating_strings(path)
    assert fmt == "humaneval"
    return build_index([(f"HumanEval:{o}", t) for o, t in strings], DecontamConfig())


def test_a_copied_prompt_is_caught_even_reformatted(humaneval_index):
    with gzip.open(SHARED / "benchmarks" / "HumanEval.jsonl.gz", "rt") as f:
        problem = json.loads(f.readline())
    leaked = "import math\n\n" + problem["prompt"].upper().replace("    ", "\t") + "    pass\n"
    assert match(leaked, humaneval_index) == "HumanEval:HumanEval/0:prompt"


def test_clean_code_and_low_information_overlaps_pass(humaneval_index):
    assert match("def add(a, b):\n    return a + b\n", humaneval_index) is None
    assert match("DIGITS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nreturn x + y\n", humaneval_index) is None


def test_short_strings_match_whole():
    index = build_index([("t:1", "sorted(set(lst))")], DecontamConfig(min_informative_words=2))
    assert match("def uniq(lst):\n    return sorted(set(lst))\n", index) == "t:1"
    assert match("def uniq(lst):\n    return sorted(set(other))\n", index) is None


def test_index_round_trip(tmp_path, humaneval_index):
    save_index(humaneval_index, tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert len(loaded) == len(humaneval_index) and loaded.owners == humaneval_index.owners


@pytest.mark.parametrize(
    "name",
    [
        "mbpp.jsonl",
        "multipl-e-humaneval-java.jsonl",
        "humaneval-x-sample-cpp.jsonl",
        "HumanEval-SingleLineInfilling.jsonl.gz",
    ],
)
def test_every_shared_benchmark_format_is_recognised(name):
    fmt, strings = contaminating_strings(need_shared(SHARED / "benchmarks" / name))
    assert fmt in ("mbpp", "multipl-e", "humaneval-x", "humaneval-infilling") and strings


def test_unknown_benchmark_format(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(UserError, match="unknown benchmark format"):
        contaminating_strings(path)
    (tmp_path / "c.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match="not a readable"):
        contaminating_strings(tmp_path / "c.jsonl")
