"""llama.cpp's server dialect as editors send it (/completion, /infill, /tokenize, /detokenize,
/props), and where an insertion ends for an editor."""

import json
import shutil

import pytest

from dscoder import formats
from dscoder.infer import prompts
from dscoder.infer.engine import Engine, Sequence
from dscoder.infer.sampling import SamplingParams

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from dscoder.infer.llama_api import UNNAMED  # noqa: E402
from dscoder.infer.server import ServeLimits, create_app  # noqa: E402

# What llama.vim sends on every cursor move (llama.vim's autoload/llama.vim, fim request body).
LLAMA_VIM = {
    "id_slot": 0,
    "input_prefix": "import os\n\n\ndef main():\n    ",
    "input_suffix": "\n\nmain()\n",
    "input_extra": [{"text": "def helper():\n    return 1\n", "time": 1700000000, "filename": "util.py"}],
    "prompt": "",
    "n_predict": 16,
    "n_indent": 4,
    "top_k": 40,
    "top_p": 0.99,
    "samplers": ["top_k", "top_p", "infill"],
    "stream": False,
    "cache_prompt": True,
    "t_max_prompt_ms": 500,
    "t_max_predict_ms": 1000,
    "response_fields": [
        "content",
        "timings/prompt_n",
        "timings/prompt_ms",
        "timings/prompt_per_token_ms",
        "timings/prompt_per_second",
        "timings/predicted_n",
        "timings/predicted_ms",
        "timings/predicted_per_token_ms",
        "timings/predicted_per_second",
        "truncated",
        "tokens_cached",
    ],
}


@pytest.fixture(scope="module")
def served(tiny_base_model):
    engine = Engine.load(tiny_base_model)
    with TestClient(create_app(engine)) as client:
        yield engine, client


def test_llama_vim_request(served):
    engine, client = served
    reply = client.post("/infill", json=LLAMA_VIM)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) <= set(LLAMA_VIM["response_fields"]) and "content" in body and "timings/predicted_n" in body
    assert body["truncated"] is False and body["timings/predicted_n"] <= 16
    prompt = prompts.insertion(
        engine,
        LLAMA_VIM["input_prefix"],
        LLAMA_VIM["input_suffix"],
        16,
        [("util.py", "def helper():\n    return 1\n")],
        path=UNNAMED,
    )
    expected = engine.generate(
        [
            Sequence(
                prompt.ids,
                SamplingParams(max_new_tokens=16, top_k=40, top_p=0.99),
                editor=prompts.EditorStop.at(LLAMA_VIM["input_prefix"], LLAMA_VIM["input_suffix"], 4),
            )
        ]
    )[0]
    assert body["content"] == expected.text
    # laid out as in training: the context file, then the current file under its own header
    assert "#util.py\ndef helper():\n    return 1\n#untitled\nimport os\n" in prompt.text
    assert client.post("/infill", json=LLAMA_VIM | {"response_fields": ["tokens_evaluated"]}).json() == {
        "tokens_evaluated": len(prompt.ids)
    }


def test_completion_as_continue_and_tabby_send_it(served):
    engine, client = served
    ask = {
        "prompt": "def fib(n):\n",
        "n_predict": 12,
        "temperature": 0,
        "stop": ["\n\n"],
        "stream": False,
        "cache_prompt": True,
    }
    body = client.post("/completion", json=ask).json()
    expected = engine.generate(
        [Sequence(engine.encode(ask["prompt"]), SamplingParams(max_new_tokens=12, stop=("\n\n",)))]
    )[0]
    assert body["content"] == expected.text and body["stop"] is True
    assert body["stop_type"] in ("eos", "limit", "word") and body["tokens_evaluated"] == len(
        engine.encode(ask["prompt"])
    )
    assert body["timings"]["predicted_n"] == body["tokens_predicted"] == len(expected.token_ids)
    assert set(body["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"}
    ids = client.post("/tokenize", json={"content": ask["prompt"]}).json()["tokens"]
    by_ids = client.post("/completion", json=ask | {"prompt": ids}).json()
    assert by_ids["content"] == body["content"]
    with client.stream("POST", "/completion", json=ask | {"stream": True}) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines]  # every line is JSON: no [DONE] in llama.cpp's streams
    assert "".join(e["content"] for e in events) == body["content"] and events[-1]["stop"] is True
    assert events[-1]["tokens_predicted"] == body["tokens_predicted"]


def test_tabby_llama_cpp_completion_kind(served):
    """Tabby's `llama.cpp/completion` applies the model's prompt template itself, sends this body
    (http-api-bindings/src/completion/llama.rs) and reads stream chunks {content, stop} until stop."""
    engine, client = served
    template = "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>"  # the DeepSeek-Coder template for Tabby
    prompt = template.format(prefix="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n")
    body = {
        "seed": 2**64 - 7,
        "prompt": prompt,
        "n_predict": 12,
        "temperature": 0.0,
        "stream": True,
        "penalty_last_n": 0,
        "presence_penalty": 0.0,
    }
    with client.stream("POST", "/completion", json=body) as stream:
        chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    text = ""
    for chunk in chunks:  # what Tabby does with each event
        text += chunk["content"]
        if chunk["stop"]:
            break
    expected = engine.generate([Sequence(engine.encode(prompt), SamplingParams(max_new_tokens=12))])[0]
    assert chunks[-1]["stop"] is True and text == expected.text


def test_openai_suffix_requests_as_continue_and_tabby_send_them(served):
    """Continue's OpenAI provider and Tabby's `openai/completion` kind: prompt + suffix, streamed;
    both stop reading at the first chunk with a finish_reason."""
    engine, client = served
    body = {
        "model": engine.name,
        "prompt": "def add(a, b):\n    ",
        "suffix": "\n\nprint(add(1, 2))\n",
        "max_tokens": 12,
        "temperature": 0.0,
        "stream": True,
        "presence_penalty": 0.0,
    }
    with client.stream("POST", "/v1/completions", json=body) as stream:
        lines = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    text = ""
    for line in lines:
        chunk = json.loads(line)  # Tabby parses every event until a finish_reason: [DONE] must come after it
        text += chunk["choices"][0]["text"]
        if chunk["choices"][0]["finish_reason"] is not None:
            break
    expected = engine.generate(
        [
            Sequence(
                prompts.insertion(engine, body["prompt"], body["suffix"], 12).ids,
                SamplingParams(max_new_tokens=12),
                editor=prompts.EditorStop.at(body["prompt"], body["suffix"]),
            )
        ]
    )[0]
    assert text == expected.text  # an editor's insertion, ended where /infill ends one


def test_tokenize_detokenize_props(served):
    engine, client = served
    ids = client.post("/tokenize", json={"content": "x = 1"}).json()["tokens"]
    assert ids == engine.tokenizer("x = 1", add_special_tokens=False)["input_ids"]
    assert (
        client.post("/tokenize", json={"content": "x", "add_special": True}).json()["tokens"][0]
        == engine.tokenizer.bos_token_id
    )
    pieces = client.post("/tokenize", json={"content": "x = 1", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "x = 1"
    assert client.post("/detokenize", json={"tokens": ids}).json()["content"] == "x = 1"
    props = client.get("/props").json()
    assert props["default_generation_settings"]["n_ctx"] == engine.context
    assert props["fim_tokens"] == {
        "prefix": engine.tokenizer.convert_tokens_to_ids(formats.FIM_BEGIN),
        "suffix": engine.tokenizer.convert_tokens_to_ids(formats.FIM_HOLE),
        "middle": engine.tokenizer.convert_tokens_to_ids(formats.FIM_END),
    }
    assert client.get("/health").json()["status"] == "ok"


def test_older_field_names_and_typed_text(served):
    engine, client = served
    ask = {
        "input_prefix": "def f(x):\n    return ",
        "input_suffix": "\n",
        "prompt": "x +",
        "n_predict": 6,
        "extra_context": [{"filename": "a.py", "text": "A = 1\n"}],
        "temperature": 0,
    }
    body = client.post("/infill", json=ask).json()
    prompt = prompts.insertion(engine, ask["input_prefix"], "\n", 6, [("a.py", "A = 1\n")], path=UNNAMED, typed="x +")
    assert prompt.text.endswith(formats.FIM_END + "x +") and "#a.py\n" in prompt.text
    assert body["tokens_evaluated"] == len(prompt.ids)


def test_the_current_file_is_headed_by_its_name(served):
    engine, client = served
    ask = {
        "input_prefix": "from util import helper\n\nx = ",
        "input_suffix": "\n",
        "filename": "src/main.py",
        "input_extra": [{"filename": "src/util.py", "text": "def helper():\n    return 1"}],
        "n_predict": 4,
    }
    body = client.post("/infill", json=ask).json()
    prompt = prompts.insertion(
        engine, ask["input_prefix"], "\n", 4, [("src/util.py", "def helper():\n    return 1")], path="src/main.py"
    )
    assert "#src/util.py\ndef helper():\n    return 1\n#src/main.py\nfrom util import helper\n" in prompt.text
    assert body["tokens_evaluated"] == len(prompt.ids)
    # without context files and without a name, the file is the sample on its own, as `infill` makes it
    alone = client.post("/infill", json={"input_prefix": "x = ", "input_suffix": "\n", "n_predict": 2}).json()
    assert alone["tokens_evaluated"] == len(prompts.insertion(engine, "x = ", "\n", 2).ids)


def test_the_window_bounds_the_file_and_context_files_stay_cached(tiny_base_model):
    """Like llama.cpp's n_batch: the file's text around the cursor is bounded, so a keystroke
    prefills the window's suffix again, not the whole rest of the file, while the context files
    before it come from the prompt cache."""
    engine = Engine.load(tiny_base_model)
    lines = [f"value_{i} = compute({i}, {i + 1})\n" for i in range(200)]
    extra = [{"filename": "util.py", "text": "def compute(a, b):\n    return a * b + 1\n" * 4}]
    with TestClient(create_app(engine, limits=ServeLimits(infill_window=96))) as client:
        replies = []
        for i, typed in ((100, "val"), (100, "value_"), (101, "v")):
            ask = {
                "input_prefix": "".join(lines[:i]) + typed,
                "input_suffix": "\n" + "".join(lines[i + 1 :]),
                "input_extra": extra,
                "filename": "main.py",
                "n_predict": 2,
                "response_fields": ["tokens_evaluated", "tokens_cached", "truncated", "timings/prompt_n"],
            }
            replies.append(client.post("/infill", json=ask).json())
    window = prompts.insertion(
        engine,
        "".join(lines[:100]) + "val",
        "\n" + "".join(lines[101:]),
        2,
        [("util.py", extra[0]["text"])],
        path="main.py",
        window=96,
    )
    whole = prompts.insertion(
        engine,
        "".join(lines[:100]) + "val",
        "\n" + "".join(lines[101:]),
        2,
        [("util.py", extra[0]["text"])],
        path="main.py",
    )
    assert replies[0]["tokens_evaluated"] == len(window.ids) < len(whole.ids)
    assert "#util.py\n" in window.text and "value_99 = " in window.text and "value_130 = " not in window.text
    assert all(r["truncated"] for r in replies)
    context = len(
        engine.tokenizer(formats.repo_sample([("util.py", extra[0]["text"])]), add_special_tokens=False)["input_ids"]
    )
    assert replies[1]["tokens_cached"] > context and replies[2]["tokens_cached"] > context
    assert replies[1]["timings/prompt_n"] < 96 // 2


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/infill", {"input_prefix": "x", "input_extra": [{"filename": "a.py"}]}, "input_extra"),
        ("/infill", {"input_prefix": "x", "input_extra": [{"filename": "a.py", "text": 3}]}, "input_extra"),
        ("/infill", {"input_prefix": "x", "n_predict": -2}, "n_predict"),
        ("/infill", {"input_prefix": "x", "t_max_prompt_ms": 0}, "t_max_prompt_ms"),
        ("/infill", {"input_prefix": "x", "t_max_prompt_ms": -5}, "t_max_prompt_ms"),
        ("/infill", {"input_prefix": "x", "t_max_prompt_ms": 10**9}, "t_max_prompt_ms"),
        ("/infill", {"input_prefix": "x", "id_slot": 99}, "id_slot"),
        ("/infill", {"input_prefix": "x", "id_slot": -2}, "id_slot"),
        ("/infill", {"input_prefix": "x", "t_max_predict_ms": 0}, "t_max_predict_ms"),
        ("/infill", {"input_prefix": "x", "response_fields": ["content", "timings/nonsense"]}, "response_fields"),
        ("/completion", {"prompt": [1, 2, 10**9]}, "prompt"),
        ("/completion", {"prompt": "x", "n_predict": -3}, "n_predict"),
        ("/completion", {"prompt": "x", "id_slot": 8}, "id_slot"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ],
)
def test_bad_requests_are_400s_and_the_server_goes_on(served, path, body, param):
    _, client = served
    reply = client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert client.post("/completion", json={"prompt": "x", "n_predict": 2}).status_code == 200


def test_infill_token_limits(tiny_base_model):
    from dscoder.infer.server import ServeLimits

    engine = Engine.load(tiny_base_model)
    ask = {"input_prefix": "def f(x):", "input_suffix": "\n", "temperature": 0}
    with TestClient(create_app(engine)) as client:
        assert client.post("/infill", json=ask).json()["generation_settings"]["n_predict"] == 64  # an editor's default
    with TestClient(create_app(engine, limits=ServeLimits(max_tokens=8))) as client:
        assert client.post("/infill", json=ask).json()["generation_settings"]["n_predict"] == 8  # within the server's
        assert client.post("/infill", json=ask | {"n_predict": 9}).status_code == 400


def test_fim_to_a_model_without_fim_tokens_is_a_400(tiny_base_model, tmp_path):
    folder = tmp_path / "no-fim"
    shutil.copytree(tiny_base_model, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if "fim" not in t["content"]]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with TestClient(create_app(Engine.load(folder))) as client:
        reply = client.post("/infill", json={"input_prefix": "x = ", "input_suffix": "\n"})
        assert reply.status_code == 400 and "cannot fill in the middle" in reply.json()["error"]["message"]
        assert client.post("/completion", json={"prompt": "x", "n_predict": 2}).status_code == 200


# --- where an insertion ends --------------------------------------------------------------------------


def test_mid_line_cursor_gives_one_line_without_repeating_the_rest():
    stop = prompts.EditorStop.at("x = f(", ")\ny = 2\n")
    assert stop.single_line and stop.cut("a, b") is None and stop.cut("a, b)\nz = 3") == 5
    assert stop.final("a, b)") == "a, b"  # the `)` already follows the cursor


def test_a_dedented_line_ends_the_block():
    stop = prompts.EditorStop.at("def f(x):\n    ", "\n\nprint(f(1))\n")
    assert not stop.single_line and stop.min_indent == 4
    assert stop.cut("y = x + 1\n    return y\n") is None
    assert stop.cut("y = x + 1\n    return y\nprint") == len("y = x + 1\n    return y")
    assert prompts.EditorStop.at("x = 1\n", "\n", n_indent=2).cut("a\n b") == 1  # llama.cpp's n_indent


def test_a_blank_line_after_code_ends_the_block():
    stop = prompts.EditorStop.at("def f(x):", "\n")
    assert stop.cut("\n    return x\n\n") == len("\n    return x")
    assert stop.cut("\n\n") is None  # no code yet
    assert stop.final("\n    return x\n") == "\n    return x"


def test_the_engine_applies_the_rules_while_generating(tiny_base_model):
    engine = Engine.load(tiny_base_model)
    prefix, suffix = "def f(x):\n    y = ", " + 1\n    return y\n"
    plain = engine.generate(
        [
            Sequence(
                engine.encode(formats.fim_prompt(prefix, suffix)),
                SamplingParams(max_new_tokens=40, stop_token_ids=(-1,)),
            )
        ]
    )[0]
    deltas = []
    ruled = engine.generate(
        [
            Sequence(
                engine.encode(formats.fim_prompt(prefix, suffix)),
                SamplingParams(max_new_tokens=40, stop_token_ids=(-1,)),
                on_delta=deltas.append,
                editor=prompts.EditorStop.at(prefix, suffix),
            )
        ]
    )[0]
    assert "\n" not in ruled.text and plain.text.startswith(ruled.text.rstrip())  # one line of the same text
    assert "".join(deltas) == ruled.text  # nothing streamed that was later cut


def test_editor_rules_false_gives_the_raw_fim_output(served):
    engine, client = served
    ask = {"input_prefix": "total = sum(", "input_suffix": ")\nprint(total)\n", "n_predict": 24, "temperature": 0}
    ids = prompts.insertion(engine, ask["input_prefix"], ask["input_suffix"], 24).ids
    raw, ruled = engine.generate(
        [
            Sequence(ids, SamplingParams(max_new_tokens=24)),
            Sequence(
                ids,
                SamplingParams(max_new_tokens=24),
                editor=prompts.EditorStop.at(ask["input_prefix"], ask["input_suffix"]),
            ),
        ]
    )
    assert client.post("/infill", json=ask).json()["content"] == ruled.text and "\n" not in ruled.text
    assert client.post("/infill", json=ask | {"editor_rules": False}).json()["content"] == raw.text


# --- prompt caching -----------------------------------------------------------------------------------


def typing_session(text: str, steps: int) -> list[tuple[str, str]]:
    """(prefix, suffix) pairs as an editor sends them while a line is typed one character at a time."""
    cut = text.index("def get_status") + len("def get_status")
    return [(text[: cut + i], text[cut + i :]) for i in range(steps)]


def test_a_typing_session_reuses_the_cache_and_gives_the_same_outputs(tiny_base_model):
    source = (
        "import json\n\n\nclass Client:\n    def __init__(self, url):\n        self.url = url\n\n"
        "    def get_status(self, name):\n        return json.loads(self.url + name)\n\n\n"
        "def main():\n    print(Client('x').get_status('y'))\n"
    )
    cached, plain = Engine.load(tiny_base_model), Engine.load(tiny_base_model)
    plain.prompt_cache = None
    for prefix, suffix in typing_session(source, 6):
        a, b = (prompts.insertion(e, prefix, suffix, 12).ids for e in (cached, plain))
        first = cached.generate([Sequence(a, SamplingParams(max_new_tokens=12))])[0]
        second = plain.generate([Sequence(b, SamplingParams(max_new_tokens=12))])[0]
        assert first.token_ids == second.token_ids
    # everything before the cursor came from the cache (what follows it moved, so it is recomputed)
    assert first.cached_tokens >= len(cached.encode(prefix)) - 2 and second.cached_tokens == 0
    assert len(cached.prompt_cache) <= cached.prompt_cache.entries


def test_tokens_cached_is_reported_and_cache_prompt_false_skips_it(served):
    engine, client = served
    ask = {
        "input_prefix": "class A:\n    def run(self):\n        total = 0\n        for item in self.items:\n            total",
        "input_suffix": "\n        return total\n",
        "n_predict": 4,
        "temperature": 0,
    }
    client.post("/infill", json=ask)
    again = client.post("/infill", json=ask | {"input_prefix": ask["input_prefix"] + " +"}).json()
    assert (
        again["tokens_cached"] > 0
        and again["timings"]["prompt_n"] == again["tokens_evaluated"] - again["tokens_cached"]
    )
    fresh = client.post("/infill", json=ask | {"cache_prompt": False}).json()
    assert fresh["tokens_cached"] == 0


def test_concurrent_requests_with_shared_prefixes_are_correct(tiny_base_model):
    from concurrent.futures import ThreadPoolExecutor

    engine = Engine.load(tiny_base_model)
    reference = Engine.load(tiny_base_model)
    reference.prompt_cache = None
    head = "import os\nimport sys\n\n\ndef main(argv):\n    path = argv[1]\n    "
    asks = [head + tail for tail in ("if os", "with open", "for line", "data = ", "return sys", "print(")] * 2
    expected = [
        reference.generate([Sequence(engine.encode(a), SamplingParams(max_new_tokens=8))])[0].token_ids for a in asks
    ]
    with TestClient(create_app(engine)) as client, ThreadPoolExecutor(6) as pool:
        got = list(
            pool.map(
                lambda a: client.post("/completion", json={"prompt": a, "n_predict": 8, "temperature": 0}).json()[
                    "content"
                ],
                asks,
            )
        )
    assert got == [engine.tokenizer.decode(ids) for ids in expected]


def test_llama_routes_read_json_whatever_the_content_type_says(served):
    """`curl URL -d '{...}'` labels its body application/x-www-form-urlencoded; llama.cpp's server
    reads it as JSON anyway, and so do these routes (the OpenAI ones keep FastAPI's check)."""
    engine, client = served
    body = json.dumps({"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "n_predict": 4, "temperature": 0})
    labelled = client.post("/infill", content=body, headers={"Content-Type": "application/json"}).json()
    for kind in ("application/x-www-form-urlencoded", None):
        headers = {"Content-Type": kind} if kind else {}
        reply = client.post("/infill", content=body, headers=headers)
        assert reply.status_code == 200 and reply.json()["content"] == labelled["content"]
    tokens = client.post(
        "/tokenize", content='{"content": "def f"}', headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (
        tokens.status_code == 200
        and tokens.json()["tokens"] == engine.tokenizer("def f", add_special_tokens=False)["input_ids"]
    )
    broken = client.post("/completion", content="{not json", headers={"Content-Type": "text/plain"})
    assert broken.status_code in (400, 422) and "error" in broken.json()
