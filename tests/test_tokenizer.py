"""The tokenizer: the released vocabulary rebuilt from GGUF, and one trained on real code."""

import gzip
import json
import random

import pytest

from conftest import GGUF, SHARED, STDLIB, need_shared
from dscoder import formats, tokenizer
from dscoder.errors import UserError

RELEASED_IDS = {
    formats.BOS: 32013,
    formats.EOS: 32014,
    formats.FIM_HOLE: 32015,
    formats.FIM_BEGIN: 32016,
    formats.FIM_END: 32017,
    formats.PAD: 32018,
    formats.USER: 32019,
    formats.ASSISTANT: 32020,
    formats.EOT: 32021,
}


def reference_vectors():
    inputs = (GGUF.parent / (GGUF.name + ".inp")).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (GGUF.parent / (GGUF.name + ".out")).read_text(encoding="utf-8").split("\n")
    assert len(inputs) == len(outputs) == 47
    return [(text, [int(i) for i in ids.split()]) for text, ids in zip(inputs, outputs)]


def test_all_47_llama_cpp_reference_vectors(deepseek_tokenizer_dir):
    tok = tokenizer.load(deepseek_tokenizer_dir)
    failures = [(text, ids) for text, ids in reference_vectors() if tok.encode(text, add_special_tokens=False) != ids]
    assert failures == []


def test_released_ids_and_size(deepseek_tokenizer_dir):
    tok = tokenizer.load(deepseek_tokenizer_dir)
    assert len(tok) == 32022
    for token, token_id in RELEASED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (32013, 32014, 32014)


def test_bos_is_added_as_released(deepseek_tokenizer_dir):
    tok = tokenizer.load(deepseek_tokenizer_dir)
    assert tok("def f():")["input_ids"] == [32013, 1551, 267, 10942]
    assert tok("def f():", add_special_tokens=False)["input_ids"] == [1551, 267, 10942]


def test_latin1_added_tokens_are_matched_as_released(deepseek_tokenizer_dir):
    # Ids 32000-32012 are single Latin-1 characters; "ü" is 32009 ("Führer" vector).
    tok = tokenizer.load(deepseek_tokenizer_dir)
    assert tok.encode("Führer", add_special_tokens=False) == [37, 32009, 71, 6247]


@pytest.mark.parametrize("which", ["deepseek_tokenizer_dir", "trained_tokenizer_dir"])
def test_added_tokens_are_never_split(which, request):
    tok = tokenizer.load(request.getfixturevalue(which))
    for added in formats.ADDED_TOKENS:
        token_id = tok.convert_tokens_to_ids(added.content)
        ids = tok.encode(f"x = 1{added.content}y", add_special_tokens=False)
        assert ids.count(token_id) == 1, added.content
    fim = formats.fim_prompt("def add(a, b):\n", "\n")
    ids = tok.encode(fim, add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids(formats.FIM_BEGIN)
    assert ids[-1] == tok.convert_tokens_to_ids(formats.FIM_END)


@pytest.mark.parametrize("which", ["deepseek_tokenizer_dir", "trained_tokenizer_dir"])
def test_decoding_keeps_fim_tokens_and_drops_bos_eos(which, request):
    tok = tokenizer.load(request.getfixturevalue(which))
    text = formats.fim_prompt("a", "b") + "c" + formats.EOS
    decoded = tok.decode(tok.encode(text), skip_special_tokens=True)
    assert decoded == formats.fim_prompt("a", "b") + "c"


@pytest.mark.parametrize("which", ["deepseek_tokenizer_dir", "trained_tokenizer_dir"])
def test_transformers_chat_template_matches_the_released_rendering(which, request):
    tok = tokenizer.load(request.getfixturevalue(which))
    messages = [
        {"role": "user", "content": "Sort a list in Python."},
        {"role": "assistant", "content": "sorted(xs)"},
        {"role": "user", "content": "In place?"},
    ]
    for gen in (False, True):
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert rendered == formats.render_chat(messages, add_generation_prompt=gen)


def test_trained_tokenizer_layout(trained_tokenizer_dir):
    tok = tokenizer.load(trained_tokenizer_dir)
    learned = len(tok) - len(formats.ADDED_TOKENS)
    assert learned == 2000
    ids = [tok.convert_tokens_to_ids(t.content) for t in formats.ADDED_TOKENS]
    assert ids == list(range(learned, learned + len(formats.ADDED_TOKENS)))
    assert tok("x")["input_ids"][0] == tok.bos_token_id == learned


def test_trained_tokenizer_round_trips_unseen_real_code(trained_tokenizer_dir):
    tok = tokenizer.load(trained_tokenizer_dir)
    unseen = sorted((STDLIB / "asyncio").glob("*.py"))[:20]
    texts = [p.read_text(encoding="utf-8") for p in unseen]
    texts.append("naïve = 'café ü € 漢字 🦙'\n\t\r\n    x  =  1\n")
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_trained_tokenizer_round_trips_humaneval(trained_tokenizer_dir):
    path = need_shared(SHARED / "benchmarks" / "HumanEval.jsonl.gz")
    tok = tokenizer.load(trained_tokenizer_dir)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    for problem in random.Random(0).sample(problems, 40):
        text = problem["prompt"] + problem["canonical_solution"]
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_vocabulary_smaller_than_the_byte_alphabet_is_refused():
    with pytest.raises(UserError, match="too small"):
        tokenizer.train(["x = 1"], vocab_size=8)


def test_missing_and_corrupt_gguf_are_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        tokenizer.from_gguf(tmp_path / "nope.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"\x00\x01not a gguf file at all" * 10)
    with pytest.raises(UserError, match="not a readable GGUF"):
        tokenizer.from_gguf(garbage)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(need_shared(GGUF).read_bytes()[:100_000])
    with pytest.raises(UserError, match="not a readable GGUF"):
        tokenizer.from_gguf(truncated)


def test_gguf_of_another_tokenizer_kind_is_refused(tmp_path):
    import gguf

    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "a", "b"])
    writer.add_token_types([2, 1, 1])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(UserError, match="expected byte-level BPE"):
        tokenizer.from_gguf(path)
