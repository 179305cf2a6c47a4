"""The generation engine against transformers, batching, stops and prompts."""

import pytest
import torch

from dscoder import formats
from dscoder.errors import UserError
from dscoder.infer import prompts
from dscoder.infer.engine import Engine, Sequence
from dscoder.infer.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_base_model):
    return Engine.load(tiny_base_model)


PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n", "class Handler:\n    def __init__(self"]


def test_greedy_matches_transformers_generate(engine):
    for text in PROMPTS:
        ids = engine.encode(text)
        (s,) = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=24))])
        reference = engine.model.generate(
            torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=engine.pad_id
        )[0, len(ids) :].tolist()
        expected = [t for t in reference]
        if engine.tokenizer.eos_token_id in expected:
            expected = expected[: expected.index(engine.tokenizer.eos_token_id)]
        assert s.token_ids == expected


def test_a_batch_gives_what_each_prompt_gives_alone(engine):
    alone = [
        engine.generate([Sequence(engine.encode(t), SamplingParams(max_new_tokens=16))])[0].token_ids for t in PROMPTS
    ]
    together = engine.generate([Sequence(engine.encode(t), SamplingParams(max_new_tokens=16)) for t in PROMPTS])
    assert [s.token_ids for s in together] == alone


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    a = engine.generate([Sequence(engine.encode(PROMPTS[0]), params)])[0]
    b = engine.generate([Sequence(engine.encode(PROMPTS[0]), params)])[0]
    c = engine.generate(
        [Sequence(engine.encode(PROMPTS[0]), SamplingParams(max_new_tokens=20, temperature=1.0, seed=8))]
    )[0]
    assert a.token_ids == b.token_ids != c.token_ids


def test_stop_sequences_are_trimmed_and_streamed_text_matches(engine):
    (free,) = engine.generate([Sequence(engine.encode(PROMPTS[1]), SamplingParams(max_new_tokens=40))])
    assert len(free.text) > 4
    stop = free.text[2:4]
    deltas = []
    (s,) = engine.generate(
        [Sequence(engine.encode(PROMPTS[1]), SamplingParams(max_new_tokens=40, stop=(stop,)), deltas.append)]
    )
    assert s.finish_reason == "stop" and s.text == free.text[: free.text.index(stop)]
    assert "".join(deltas) == s.text


def test_stops_at_eos_and_reports_length(engine):
    eos = engine.tokenizer.eos_token_id
    assert engine.stop_token_ids == (eos,)
    (s,) = engine.generate([Sequence(engine.encode("x"), SamplingParams(max_new_tokens=3))])
    assert s.finish_reason in ("length", "stop") and len(s.token_ids) <= 3
    assert eos not in s.token_ids


def test_instruct_models_stop_at_eot(tiny_instruct_model):
    instruct = Engine.load(tiny_instruct_model)
    eot = instruct.tokenizer.convert_tokens_to_ids(formats.EOT)
    assert (
        eot in instruct.stop_token_ids
        and instruct.tokenizer.convert_tokens_to_ids(formats.EOS) in instruct.stop_token_ids
    )


def test_prompt_fitting(engine):
    long_text = "x = 1\n" * 2000
    p = prompts.completion(engine, long_text, 100)
    assert len(p.ids) == engine.context - 100 and p.truncated > 0 and p.ids[0] == engine.tokenizer.bos_token_id
    fitted = prompts.insertion(engine, "# a header line\n" + long_text + "def f(", ")\n" + long_text, 100)
    assert len(fitted.ids) <= engine.context - 100 and fitted.truncated > 0
    assert fitted.text.startswith(formats.FIM_BEGIN) and fitted.text.endswith(formats.FIM_END)
    before, after = fitted.text[len(formats.FIM_BEGIN) : -len(formats.FIM_END)].split(formats.FIM_HOLE)
    assert before.endswith("x = 1\ndef f(") and after.startswith(")\nx = 1\n")  # the text at the cursor is kept
    assert "# a header line" not in before  # the farthest text went first
    # its share, less the lines dropped to keep the start where it was (ANCHOR_LINES at most, 4 tokens each here)
    assert len(engine.encode(before)) - 1 >= 0.75 * (engine.context - 100 - 4) - 4 * prompts.ANCHOR_LINES
    typed_on = prompts.insertion(engine, "# a header line\n" + long_text + "x = 1\ndef f(", ")\n" + long_text, 100)
    assert typed_on.ids[:300] == fitted.ids[:300]  # one more line typed: the prompt starts where it did
    with pytest.raises(UserError, match="chat prompt has"):
        prompts.chat(engine, [{"role": "user", "content": long_text}], 100)
    with pytest.raises(UserError, match="the prompt has"):
        engine.generate([Sequence(engine.encode(long_text), SamplingParams())])


def test_an_insertion_with_repository_context_is_laid_out_as_in_training(engine):
    context = [
        ("pkg/util.py", "def clamp(v, lo, hi):\n    return max(lo, min(v, hi))\n"),
        ("pkg/config.py", "LOW = 0\n"),
    ]
    p = prompts.insertion(
        engine, "from pkg.util import clamp\n\nx = clamp(", ")\n", 16, context, path="pkg/main.py", typed="va"
    )
    assert (
        p.text
        == formats.fim_prompt(
            formats.repo_sample(context)
            + formats.file_header("pkg/main.py")
            + "from pkg.util import clamp\n\nx = clamp(",
            ")\n",
        )
        + "va"
    )
    assert p.truncated == 0 and p.ids == engine.encode(p.text)
    big = [("far.py", "y = 2\n" * 150), ("near.py", "z = 3\n" * 20)]  # 600 and 80 tokens
    p = prompts.insertion(engine, "a = 1\n" * 50, "\n", engine.context - 400, big)
    assert "#near.py" in p.text and "#far.py" not in p.text and p.truncated > 0  # the nearest file is kept first
    assert len(p.ids) <= 400


def test_prompts_use_the_shared_formats(engine):
    assert prompts.insertion(engine, "a = ", "\n", 8).text == formats.fim_prompt("a = ", "\n")
    chat = prompts.chat(engine, [{"role": "user", "content": "hi"}], 8)
    assert chat.text == formats.render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert chat.ids.count(engine.tokenizer.bos_token_id) == 1
    assert prompts.split_at_cursor("ab\ncd\nef", 2, 1) == ("ab\nc", "d\nef")
    with pytest.raises(UserError, match="outside the file"):
        prompts.split_at_cursor("a\nb", 5, None)


def test_sequences_joining_a_running_batch_give_what_they_give_alone(engine):
    texts = PROMPTS + ["for i in range(10):\n", "x"]
    alone = [engine.generate([Sequence(engine.encode(t), SamplingParams(max_new_tokens=12))])[0] for t in texts]
    # computed again, not answered from the rows' last answers (the same greedy prompts)
    waiting = [Sequence(engine.encode(t), SamplingParams(max_new_tokens=12), reuse_cache=False) for t in texts[1:]]
    steps = {"n": 0}

    def admit(free):
        steps["n"] += 1
        if steps["n"] % 3 == 0 and waiting:  # join every third step, one at a time
            return [waiting.pop(0)]
        return []

    finished = []
    first = Sequence(
        engine.encode(texts[0]),
        SamplingParams(max_new_tokens=12),
        on_finish=lambda: finished.append(0),
        reuse_cache=False,
    )
    result = engine.generate([first], admit=admit)
    assert not waiting and len(result) == len(texts) and finished == [0]
    by_prompt = {tuple(s.prompt_ids): s.token_ids for s in result}
    assert [by_prompt[tuple(s.prompt_ids)] for s in alone] == [s.token_ids for s in alone]


def test_a_batch_that_never_empties_does_not_grow_with_its_age(engine, monkeypatch):
    """Sequences join and leave a running batch for a long time (a busy server): the attention
    window stays the size of the longest live sequence, and every output is what it is alone."""
    texts = [PROMPTS[i % len(PROMPTS)] + "#" * (i % 4) for i in range(40)]
    params = SamplingParams(max_new_tokens=10, stop_token_ids=(-1,))  # no early stop: exactly 10 tokens each
    alone = {t: engine.generate([Sequence(engine.encode(t), params)])[0].token_ids for t in set(texts)}
    waiting = [Sequence(engine.encode(t), params) for t in texts[1:]]
    widths, attend = [], torch.nn.functional.scaled_dot_product_attention
    cache = [t.data_ptr() for t in engine._runner.cache.keys]

    def attention(q, k, v, **kwargs):  # the keys each attention reads
        widths.append(k.shape[-2])
        return attend(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", attention)
    result = engine.generate(
        [Sequence(engine.encode(texts[0]), params)], admit=lambda free: [waiting.pop(0)] if waiting and free else []
    )
    monkeypatch.undo()
    assert [t.data_ptr() for t in engine._runner.cache.keys] == cache  # the cache was never reallocated
    longest = max(len(engine.encode(t)) for t in texts) + params.max_new_tokens
    assert len(result) == 40 and max(widths) <= longest, (max(widths), longest)
    assert [s.token_ids for s in result] == [alone[t] for t in texts]  # in the order they joined


def test_a_kv_cache_larger_than_the_memory_is_refused_with_its_size(tiny_base_model, monkeypatch):
    from dscoder.infer import runner

    probe = Engine.load(tiny_base_model)
    per_token = runner.bytes_per_token(probe.model.config, probe.dtype)
    monkeypatch.setattr(runner, "free_bytes", lambda device: 8 * 400 * per_token)  # room for 8 x 400 tokens
    with pytest.raises(UserError, match=r"KV cache for 8 sequences of 512 tokens needs .* GiB; .* GiB are free"):
        Engine.load(tiny_base_model, context=512)  # refused as it loads, before any request
    lowered = Engine.load(tiny_base_model)  # no --context: lowered to what fits, and it still answers
    assert (
        lowered.context == 256
        and lowered.generate([Sequence(lowered.encode("def f(x):\n"), SamplingParams(max_new_tokens=3))])[0].token_ids
    )
    with pytest.raises(UserError, match="--context 999999: the model's context is"):
        Engine.load(tiny_base_model, context=999999)


def test_a_sequence_stops_at_the_end_of_its_context_without_overflowing(tiny_base_model):
    engine = Engine.load(tiny_base_model, context=64)
    ids = engine.encode("def f(x):\n    return x\n" * 20)[:60]
    s = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=50, stop_token_ids=(-1,)))])[0]
    assert s.finish_reason == "length" and len(s.token_ids) == 4  # the context's last free positions
    with pytest.raises(UserError, match="the prompt has 64 tokens; the model's context is 64"):
        engine.generate([Sequence(engine.encode("x " * 200)[:64], SamplingParams())])


def test_int8_in_bfloat16_gives_the_same_tokens_cached_or_not_alone_or_batched(tiny_base_model):
    """The CPU serving path (int8 weights, a bfloat16 cache, dscoder's decode kernels): a prompt
    continued from a cached row, and a request decoded beside others, give exactly the tokens
    it gets computed from scratch and alone."""
    engine = Engine.load(tiny_base_model, dtype="bfloat16", quantize=8)
    plain = Engine.load(tiny_base_model, dtype="bfloat16", quantize=8)
    plain.prompt_cache = None
    head = "import os\nimport sys\n\n\ndef main(argv):\n    path = argv[1]\n    "
    asks = [head + tail for tail in ("if os", "with open", "for line", "data = ")]
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(-1,))
    alone = [plain.generate([Sequence(plain.encode(a), params)])[0].token_ids for a in asks]
    cached = [engine.generate([Sequence(engine.encode(a), params)])[0] for a in asks]
    assert [s.token_ids for s in cached] == alone and all(s.cached_tokens > 0 for s in cached[1:])
    together = engine.generate([Sequence(engine.encode(a), params) for a in asks])
    assert [s.token_ids for s in together] == alone


def _without_the_model(engine, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was run")

    monkeypatch.setattr(engine._runner, "prefill", refuse)
    monkeypatch.setattr(engine._runner, "decode", refuse)


def test_a_greedy_prompt_again_or_typed_along_its_answer_gets_the_answer_without_the_model(engine, monkeypatch):
    """A row remembers its last greedy answer: the same prompt again, or the prompt followed by
    the answer's first tokens (the user typed what was suggested), gets the rest of that answer
    at once, as greedy decoding from those tokens gives it."""
    ids = engine.encode("import json\n\n\ndef load(path):\n    with open(path) as f:\n        " * 3)
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(-1,))
    first = engine.generate([Sequence(ids, params)])[0]
    assert len(first.token_ids) == 12
    with monkeypatch.context() as patch:
        _without_the_model(engine, patch)
        again = engine.generate([Sequence(ids, params)])[0]
        typed = engine.generate(
            [Sequence(ids + first.token_ids[:3], SamplingParams(max_new_tokens=9, stop_token_ids=(-1,)))]
        )[0]
    assert again.token_ids == first.token_ids and again.text == first.text and again.cached_tokens == len(ids)
    assert typed.token_ids == first.token_ids[3:] and typed.cached_tokens == len(ids) + 3
    # asked for more than the answer has: the row goes on decoding where the answer stopped,
    # exactly as one uninterrupted run from scratch
    longer = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=20, stop_token_ids=(-1,)))])[0]
    engine.prompt_cache = None
    fresh = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=20, stop_token_ids=(-1,)))])[0]
    engine.prompt_cache = 1
    assert longer.token_ids == fresh.token_ids and longer.cached_tokens == len(ids)


def test_sampled_requests_and_other_prompts_compute_only_what_no_row_holds(engine):
    ids = engine.encode("def area(width, height):\n    return width * height\n\n\n" * 4)
    engine.generate([Sequence(ids, SamplingParams(max_new_tokens=4, stop_token_ids=(-1,)))])
    sampled = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=2, temperature=0.8, seed=1))])[0]
    assert sampled.cached_tokens == len(ids) - 1  # its last token is computed again for its logits
    other = engine.generate([Sequence(ids + engine.encode("print(area(2, 3))")[1:], SamplingParams(max_new_tokens=2))])[
        0
    ]
    assert other.cached_tokens == len(ids)


def test_int8_on_a_cpu_gives_a_token_the_same_numbers_however_its_prompt_was_split(tiny_base_model):
    """The CPU serving path (int8 weights, a bfloat16 cache, dscoder's kernels): a prompt computed
    whole, continued from a cached start of any length, or a token decoded after it give bit for
    bit the same logits, so the cache and work done ahead change timing, never text."""

    engine = Engine.load(tiny_base_model, dtype="bfloat16", quantize=8)
    runner = engine._runner
    if not runner.attend:
        pytest.skip("dscoder's kernels are off here (no C compiler): torch's attention sums differently by length")
    ids = engine.encode("import os\nimport sys\n\n\ndef main(argv):\n    path = argv[1]\n" * 12)
    whole, _ = runner.prefill(0, ids, 0, chunk=64)
    for cut in (1, 2, 7, 100):
        runner.prefill(0, ids[:-cut], 0)
        part, _ = runner.prefill(0, ids[-cut:], len(ids) - cut)
        assert torch.equal(part, whole), cut
    runner.prefill(0, ids[:-1], 0)
    assert torch.equal(runner.decode([0], ids[-1:], [len(ids) - 1])[0], whole)
