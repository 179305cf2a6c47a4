"""Completion at typing speed: prompts fitted to a time (t_max_prompt_ms), the work done while
the server is idle (the whole prompt after a shortened one, the next line's prompt, the context
an editor sends ahead with n_predict 0), answers taken from the last one, and an editor's
superseded requests cancelled."""

import random
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.alone  # latency policies measured on this machine: nothing may run beside them

from dscoder import tokenizer as tokenizer_lib
from dscoder.infer import prompts
from dscoder.infer.engine import Engine, encode_prompt

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from dscoder.infer.server import create_app  # noqa: E402

LINES = [f"value_{i} = compute({i})\n" for i in range(40)]
EXTRA = [
    {"filename": "a.py", "text": "def compute(x, scale):\n    return x * scale\n"},
    {"filename": "b.py", "text": "LIMIT = 10\nNAMES = ['a', 'b', 'c']\n"},
]


def keystroke(line: int, typed: str, **more) -> dict:
    """An /infill body as llama.vim sends it, the cursor after `typed` on a new line `line`."""
    return {
        "input_prefix": "".join(LINES[:line]),
        "prompt": typed,
        "input_suffix": "\n" + "".join(LINES[line:]),
        "input_extra": EXTRA,
        "n_predict": 4,
        "temperature": 0,
        "cache_prompt": True,
    } | more


def whole_prompt(engine, body: dict) -> list[int]:
    return prompts.insertion(
        engine,
        body["input_prefix"],
        body["input_suffix"],
        body["n_predict"],
        [(c["filename"], c["text"]) for c in body["input_extra"]],
        path="untitled",
        typed=body["prompt"],
        window=2048,
    ).ids


def wait_until(condition, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "the server did not do it in time"
        time.sleep(0.05)


@pytest.fixture()
def typing(tiny_base_model, monkeypatch):
    """A server whose prompts cost 1 ms per token not in its cache (its measured speed, made exact)."""
    engine = Engine.load(tiny_base_model)
    monkeypatch.setattr(
        engine, "prefill_ms", lambda ids, adapter=None: float(len(ids) - engine._rows.shared(ids, adapter))
    )
    with TestClient(create_app(engine)) as client:
        yield engine, client


def test_a_prompt_is_fitted_to_its_time_and_completed_while_the_server_is_idle(typing):
    engine, client = typing
    first = client.post("/infill", json=keystroke(30, "val", t_max_prompt_ms=60)).json()
    whole = whole_prompt(engine, keystroke(30, "val"))
    # nothing cached: the suffix and the context files are left out, the prefix kept
    assert first["truncated"] and first["tokens_evaluated"] < len(whole)
    assert first["timings"]["left_out_for_time_n"] == len(whole) - first["tokens_evaluated"]
    # while idle the server computes the whole prompt, so the next keystroke gets all of it at once
    wait_until(lambda: engine._rows.shared(whole) == len(whole))
    second = client.post("/infill", json=keystroke(30, "valu", t_max_prompt_ms=60)).json()
    assert second["timings"]["left_out_for_time_n"] == 0 and second["timings"]["prompt_n"] <= 3
    assert second["tokens_evaluated"] == len(whole_prompt(engine, keystroke(30, "valu")))
    # and the next line's prompt (Enter pressed after "valu", the suffix unchanged)
    next_line = keystroke(30, "", input_prefix="".join(LINES[:30]) + "valu\n")
    guess = whole_prompt(engine, next_line)
    wait_until(lambda: engine._rows.shared(guess) == len(guess))
    third = client.post("/infill", json=next_line | {"t_max_prompt_ms": 60}).json()
    assert third["timings"]["prompt_n"] == 1 and not third["timings"]["left_out_for_time_n"]


def test_a_prompt_within_its_time_is_not_shortened(typing):
    engine, client = typing
    reply = client.post("/infill", json=keystroke(20, "value_", t_max_prompt_ms=100_000)).json()
    assert reply["truncated"] is False and reply["tokens_evaluated"] == len(
        whole_prompt(engine, keystroke(20, "value_"))
    )


def test_the_context_an_editor_sends_ahead_is_computed_while_idle(typing):
    engine, client = typing
    chunks = EXTRA + [{"filename": "c.py", "text": "class Cache:\n    size = 3\n"}]
    ahead = {
        "input_prefix": "",
        "input_suffix": "",
        "prompt": "",
        "input_extra": chunks,
        "n_predict": 0,
        "t_max_prompt_ms": 1,
        "t_max_predict_ms": 1,
        "cache_prompt": True,
    }  # llama.vim's ring update
    reply = client.post("/infill", json=ahead | {"response_fields": [""]})  # as llama.vim sends it: no fields
    assert reply.status_code == 200 and reply.json() == {}
    reply = client.post("/infill", json=ahead)
    assert reply.status_code == 200 and reply.json()["content"] == "" and reply.json()["tokens_predicted"] == 0
    files = prompts.insertion(engine, "", "", 1, [(c["filename"], c["text"]) for c in chunks], path="untitled").ids
    wait_until(lambda: engine._rows.shared(files) == len(files))
    real = client.post("/infill", json=keystroke(10, "x", input_extra=chunks)).json()
    assert real["tokens_cached"] >= len(files) - 3  # the FIM hole and end come after the chunks


def test_a_request_cancels_the_one_its_editor_slot_still_has(tiny_base_model, monkeypatch):
    engine = Engine.load(tiny_base_model)
    engine.stop_token_ids = ()  # every answer runs to its limit unless cancelled
    slow = engine.prepare() or engine._runner.decode

    def decode(*args):
        time.sleep(0.02)
        return slow(*args)

    monkeypatch.setattr(engine._runner, "decode", decode)
    body = {"prompt": "def main():\n", "n_predict": 200, "temperature": 0}
    with TestClient(create_app(engine)) as client, ThreadPoolExecutor(3) as pool:
        old = pool.submit(client.post, "/completion", json=body | {"id_slot": 0})
        other = pool.submit(client.post, "/completion", json=body | {"id_slot": 1, "n_predict": 40})
        time.sleep(0.5)
        new = client.post("/completion", json=body | {"id_slot": 0, "n_predict": 5}).json()
        old, other = old.result().json(), other.result().json()
    assert old["stop_type"] == "limit" and old["tokens_predicted"] < 200  # cancelled, answered with what it had
    assert new["tokens_predicted"] == 5 and other["tokens_predicted"] == 40  # another slot is left alone


def test_a_burst_of_keystrokes_from_one_editor_leaves_the_server_to_another(tiny_base_model):
    engine = Engine.load(tiny_base_model)
    engine.stop_token_ids = ()
    burst = [keystroke(30, "v" * (1 + i % 20), n_predict=64) for i in range(100)]
    with TestClient(create_app(engine)) as client, ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda body: client.post("/infill", json=body), burst[:50]))
        other = client.post("/infill", json=keystroke(35, "x", n_predict=64, input_extra=[]) | {"id_slot": 3})
        replies += list(pool.map(lambda body: client.post("/infill", json=body), burst[50:]))
    assert all(r.status_code == 200 for r in replies) and other.status_code == 200
    assert other.json()["tokens_predicted"] > 0
    # each keystroke of the burst cancels the one before: far fewer tokens than 100 answers' worth
    assert sum(r.json()["tokens_predicted"] for r in replies) < 100 * 64 // 2


def test_insertion_ids_built_from_lines_equal_the_whole_text_tokenized(deepseek_tokenizer_dir):
    """The prompt layer assembles an insertion's ids from its lines' (cached across keystrokes):
    the same ids as tokenizing the prompt's text whole, wherever the cursor and the cuts fall."""
    tokenizer = tokenizer_lib.load(deepseek_tokenizer_dir)
    engine = SimpleNamespace(tokenizer=tokenizer, context=4096, encode=lambda text: encode_prompt(tokenizer, text))
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    rng = random.Random(0)
    for path in sources:
        text = path.read_text(errors="replace")
        for _ in range(3):
            cursor = rng.randrange(len(text) + 1)
            extra = [("util.py", rng.choice(sources).read_text(errors="replace")[:2000])] if rng.random() < 0.5 else []
            prompt = prompts.insertion(
                engine,
                text[:cursor],
                text[cursor:],
                64,
                extra,
                path=rng.choice([None, path.name]),
                typed=rng.choice(["", "    ", "x = fo", "é😀"]),
                window=rng.choice([None, 1024, 200]),
            )
            assert prompt.ids == engine.encode(prompt.text), (path.name, cursor)


def test_a_time_limit_leaves_out_the_far_suffix_then_the_first_context_files():
    """What a time limit keeps, nearest the cursor first: the prefix, the suffix's first lines,
    the context files given last."""

    class Characters:  # a tokenizer of one token per character, enough for the fitting's arithmetic
        bos_token_id, unk_token_id = 0, 1

        def convert_tokens_to_ids(self, token):
            return {"<｜fim▁begin｜>": 2, "<｜fim▁hole｜>": 3, "<｜fim▁end｜>": 4}.get(token, 1)

        def __call__(self, text, add_special_tokens=False):
            if isinstance(text, list):
                return {"input_ids": [[5] * len(t) for t in text]}
            return {"input_ids": [5] * len(text)}

    chars = Characters()
    engine = SimpleNamespace(tokenizer=chars, context=10_000, encode=lambda text: [0] + chars(text)["input_ids"])
    files = [("far.py", "a" * 99 + "\n"), ("near.py", "b" * 49 + "\n")]  # 100 and 50 characters + headers
    prefix, suffix = "p" * 99 + "\n", "".join(f"{i:03d}" + "s" * 6 + "\n" for i in range(20))  # 20 lines of 10
    full = len(prompts.insertion(engine, prefix, suffix, 8, files).ids)
    far = full - len(prompts.insertion(engine, prefix, suffix, 8, files[1:]).ids)
    near = full - far - len(prompts.insertion(engine, prefix, suffix, 8).ids)
    for ms, kept_lines, kept_files in (
        (full, 20, 2),
        (full - 30, 17, 2),
        (full - 200 - far, 0, 1),
        (full - 200 - far - near + 25, 2, 0),
        (5, 0, 0),
    ):
        fitted = prompts.insertion(
            engine, prefix, suffix, 8, files, time_limit=prompts.TimeLimit(lambda ids: float(len(ids)), ms)
        )
        assert fitted.text.count("s" * 6) == kept_lines, ms
        assert ("near.py" in fitted.text, "far.py" in fitted.text) == (kept_files >= 1, kept_files == 2), ms
        assert prefix in fitted.text and fitted.late == full - len(fitted.ids) == fitted.truncated


def test_an_openai_insertion_gets_the_same_latency_policy(typing):
    """Continue's and Tabby's OpenAI providers send `prompt` and `suffix` to /v1/completions:
    the prompt is fitted to its time and the next line's prompt is computed while idle."""
    engine, client = typing
    prefix, suffix = "".join(LINES[:30]) + "    val", "\n" + "".join(LINES[30:])
    body = {"model": engine.name, "prompt": prefix, "suffix": suffix, "max_tokens": 4, "temperature": 0}
    whole = prompts.insertion(engine, prefix, suffix, 4, window=2048).ids
    short = client.post("/v1/completions", json=body | {"t_max_prompt_ms": 60}).json()
    assert short["usage"]["prompt_tokens"] < len(whole)  # the suffix left out: nothing was cached
    guess = prompts.insertion(engine, prefix + "\n    ", suffix, 4, window=2048).ids  # Enter, indented as the line
    wait_until(lambda: engine._rows.shared(guess) == len(guess))
    bad = client.post("/v1/completions", json=body | {"t_max_prompt_ms": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "t_max_prompt_ms"


def test_a_cut_prefix_keeps_its_start_while_the_editor_window_slides(deepseek_tokenizer_dir):
    """llama.vim sends the 256 lines before the cursor, so each Enter moves the text's first line;
    a cut prefix starts at a line chosen by its content, so the prompt keeps its start (and the
    cache its work) over many lines instead of moving with every one."""
    tokenizer = tokenizer_lib.load(deepseek_tokenizer_dir)
    engine = SimpleNamespace(tokenizer=tokenizer, context=4096, encode=lambda text: encode_prompt(tokenizer, text))
    lines = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text().splitlines(keepends=True)
    starts = []
    for cursor in range(600, 664):  # Enter pressed 64 times
        prefix = "".join(lines[cursor - 256 : cursor])
        prompt = prompts.insertion(engine, prefix, "".join(lines[cursor : cursor + 64]), 64, window=1024)
        assert prompt.truncated
        starts.append(prompt.text.split("\n", 1)[0])
    changes = sum(a != b for a, b in zip(starts, starts[1:]))
    assert changes <= 8, changes  # about every 32 lines of code, not 63 times


def test_new_context_sent_ahead_brings_the_next_line_guess_up_to_date(typing):
    """llama.vim adds chunks to its ring while the user pauses and sends them with n_predict 0;
    context comes first in a prompt, so the next line's prompt is computed again with them."""
    engine, client = typing
    body = keystroke(30, "value_30 = 1", id_slot=0)
    client.post("/infill", json=body)
    chunks = EXTRA + [{"filename": "c.py", "text": "class Cache:\n    size = 3\n"}]
    ring = client.post(
        "/infill",
        json={
            "input_prefix": "",
            "input_suffix": "",
            "prompt": "",
            "input_extra": chunks,
            "n_predict": 0,
            "id_slot": 0,
            "response_fields": [""],
        },
    )
    assert ring.status_code == 200, ring.text
    next_line = keystroke(30, "", input_prefix=body["input_prefix"] + "value_30 = 1\n", input_extra=chunks)
    guess = whole_prompt(engine, next_line)
    wait_until(lambda: engine._rows.shared(guess) == len(guess))
    reply = client.post("/infill", json=next_line | {"id_slot": 0}).json()
    assert reply["timings"]["prompt_n"] == 1
