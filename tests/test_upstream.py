"""`dscoder serve --upstream`: dscoder builds the DeepSeek prompts and another OpenAI-compatible
server (here a second `dscoder serve`) generates."""

import socket

import httpx
import pytest

from dscoder import formats
from dscoder.cli import main
from dscoder.infer import prompts
from dscoder.infer.engine import Sequence
from dscoder.infer.sampling import SamplingParams

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
from test_server import KEY, start  # noqa: E402


@pytest.fixture(scope="module")
def fronted(tiny_base_model):
    from dscoder.infer.engine import Engine
    from dscoder.infer.remote import Endpoint
    from dscoder.infer.upstream import UpstreamEngine

    engine = Engine.load(tiny_base_model)
    upstream, up_thread, up_url = start(engine, api_key="upstream-key")
    front_engine = UpstreamEngine(Endpoint(up_url + "/v1", "upstream-key", engine.name), tiny_base_model)
    front, front_thread, front_url = start(front_engine)
    yield engine, up_url, front_url
    for server, thread in ((front, front_thread), (upstream, up_thread)):
        server.should_exit = True
        thread.join(timeout=10)


def test_fim_through_the_front_is_the_upstream_with_a_hand_built_prompt(fronted):
    engine, up_url, front_url = fronted
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    front = openai.OpenAI(base_url=front_url + "/v1", api_key=KEY, max_retries=0)
    direct = openai.OpenAI(base_url=up_url + "/v1", api_key="upstream-key", max_retries=0)
    raw = {"editor_rules": False}  # the FIM output as the upstream gives it, not ended as an editor wants
    via = front.completions.create(
        model=engine.name, prompt=prefix, suffix=suffix, max_tokens=12, temperature=0, extra_body=raw
    )
    hand = direct.completions.create(
        model=engine.name, prompt=formats.fim_prompt(prefix, suffix), max_tokens=12, temperature=0
    )
    assert via.choices[0].text == hand.choices[0].text
    # streamed, the same text
    chunks = front.completions.create(
        model=engine.name, prompt=prefix, suffix=suffix, max_tokens=12, temperature=0, stream=True, extra_body=raw
    )
    assert "".join(c.choices[0].text for c in chunks) == hand.choices[0].text
    # plain completion and chat
    via = front.completions.create(model=engine.name, prompt="import os\n", max_tokens=10, temperature=0)
    hand = direct.completions.create(model=engine.name, prompt="import os\n", max_tokens=10, temperature=0)
    assert via.choices[0].text == hand.choices[0].text
    messages = [{"role": "user", "content": "Write a function."}]
    via = front.chat.completions.create(model=engine.name, messages=messages, max_tokens=8, temperature=0)
    hand = direct.completions.create(
        model=engine.name, prompt=formats.render_chat(messages, add_generation_prompt=True), max_tokens=8, temperature=0
    )
    assert via.choices[0].message.content == hand.choices[0].text


def test_the_front_ends_an_insertion_where_an_editor_wants(fronted):
    """`/v1/completions` with `suffix` through the front ends as through a local server (the front
    applies the rules; the upstream only continues text): mid-line, each choice at the end of its
    first line; at a line's end, as the engine ends it with the same rule; streamed, the same text."""
    engine, _, front_url = fronted
    front = openai.OpenAI(base_url=front_url + "/v1", api_key=KEY, max_retries=0)

    def both(**ask) -> list[str]:
        whole = [c.text for c in front.completions.create(model=engine.name, **ask).choices]
        streamed = [""] * len(whole)
        for chunk in front.completions.create(model=engine.name, stream=True, **ask):
            streamed[chunk.choices[0].index] += chunk.choices[0].text
        assert streamed == whole
        return whole

    # mid-line, sampled (the tiny model's greedy FIM starts with a newline), several choices
    prefix, suffix = "def f(x):\n    y = ", " + 1\n    return y\n"
    ask = dict(prompt=prefix, suffix=suffix, max_tokens=64, temperature=1.0, n=8, seed=0)
    raw = both(**ask, extra_body={"editor_rules": False})
    assert any(text.split("\n")[0].strip() and "\n" in text for text in raw)
    rule = prompts.EditorStop.at(prefix, suffix)
    assert both(**ask) == [rule.final(text.split("\n")[0]) for text in raw]
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    ids = engine.encode(formats.fim_prompt(prefix, suffix))
    rule = prompts.EditorStop.at(prefix, suffix)
    local = engine.generate([Sequence(ids, SamplingParams(max_new_tokens=24), editor=rule)])[0]
    assert both(prompt=prefix, suffix=suffix, max_tokens=24, temperature=0) == [local.text]


def test_the_front_streams_only_what_the_rules_keep():
    """An insertion streamed through the front is its answer: as the engine does, the front
    streams whole lines and no trailing blank text, which a rule may still take back."""
    import asyncio
    from types import SimpleNamespace

    from dscoder.infer.upstream import UpstreamBatcher

    async def stream(*args):
        for delta in ("y = x + 1\n", "    return y\n", "\n", "print(f(1))\n"):
            yield delta, None

    engine = SimpleNamespace(
        instruct=False,
        endpoint=SimpleNamespace(stream=stream),
        text_of=lambda ids: "",
        tokenizer=lambda text, add_special_tokens: {"input_ids": text.split()},
    )
    deltas = []
    s = Sequence(
        [1],
        SamplingParams(max_new_tokens=64),
        on_delta=deltas.append,
        editor=prompts.EditorStop.at("def f(x):\n    ", "\n"),
    )
    asyncio.run(UpstreamBatcher(engine).run([s]))
    assert s.text == "y = x + 1\n    return y" and "".join(deltas) == s.text and s.finish_reason == "stop"


def test_infill_with_context_through_the_front(fronted):
    engine, up_url, front_url = fronted
    ask = {
        "input_prefix": "x = ",
        "input_suffix": "\n",
        "filename": "main.py",
        "n_predict": 8,
        "temperature": 0,
        "input_extra": [{"filename": "util.py", "text": "def helper():\n    return 1\n"}],
    }
    reply = httpx.post(front_url + "/infill", json=ask, headers={"Authorization": f"Bearer {KEY}"}).json()
    text = formats.fim_prompt(
        formats.repo_sample([("util.py", "def helper():\n    return 1\n")]) + "#main.py\nx = ", "\n"
    )
    hand = httpx.post(
        up_url + "/v1/completions",
        json={"prompt": text, "max_tokens": 8, "temperature": 0},
        headers={"Authorization": "Bearer upstream-key"},
    ).json()["choices"][0]["text"]
    first_line = hand.split("\n")[0]  # /infill stops an insertion typed at a line's end at the block's end
    assert reply["content"].split("\n")[0] == first_line.rstrip() or reply["content"] == first_line
    assert reply["tokens_evaluated"] > 10


def test_upstream_down_is_a_502_and_the_front_keeps_serving(tiny_base_model):
    from dscoder.infer.remote import Endpoint
    from dscoder.infer.upstream import UpstreamEngine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    front_engine = UpstreamEngine(Endpoint(f"http://127.0.0.1:{port}/v1", model="m", retries=0), tiny_base_model)
    front, thread, url = start(front_engine)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as exc:
            client.completions.create(model="m", prompt="x", max_tokens=4)
        assert exc.value.status_code == 502 and "upstream" in exc.value.message
        assert httpx.get(url + "/health").json()["status"] == "ok"
        with pytest.raises(openai.BadRequestError):  # what the front checks is still checked
            client.completions.create(model="m", prompt="x", max_tokens=4, logprobs=2)
    finally:
        front.should_exit = True
        thread.join(timeout=10)


def test_serve_upstream_flags_are_checked(tiny_base_model, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for argv, said in (
        (["--upstream", f"http://127.0.0.1:{port}/v1"], "--tokenizer"),
        (["--upstream", f"http://127.0.0.1:{port}/v1", "--tokenizer", str(tiny_base_model)], "cannot reach"),
        (["--model", str(tiny_base_model), "--upstream", "http://x/v1"], "either --model"),
        ([], "either --model"),
    ):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        assert main(["serve", "--port", str(free), *argv]) != 0
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err


def test_in_front_of_llama_cpp_python_server(tiny_base_model, tmp_path):
    """A third-party OpenAI-compatible server: llama-cpp-python's `llama_cpp.server` on dscoder's
    GGUF export of the same model. Greedy FIM through the front equals that server given the
    hand-built DeepSeek prompt."""
    import subprocess
    import sys
    import time

    pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (pip install "
        "'llama-cpp-python[server]'; it compiles llama.cpp, minutes)",
    )
    pytest.importorskip(
        "llama_cpp.server.app",
        reason="llama-cpp-python's server extras are not installed (pip install 'llama-cpp-python[server]')",
    )
    from dscoder.infer.remote import Endpoint
    from dscoder.infer.upstream import UpstreamEngine

    gguf_file = tmp_path / "tiny.gguf"
    assert main(["model", "export-gguf", "--model", str(tiny_base_model), "--out", str(gguf_file)]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf_file),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "512",
            "--model_alias",
            "tiny",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    up_url = f"http://127.0.0.1:{port}/v1"
    front = thread = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(up_url + "/models").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        front_engine = UpstreamEngine(Endpoint(up_url, model="tiny"), tiny_base_model)
        front, thread, front_url = start(front_engine)
        prefix, suffix = "import json\n\ndef load(path):\n    ", "\n    return data\n"
        via = openai.OpenAI(base_url=front_url + "/v1", api_key=KEY, max_retries=0).completions.create(
            model="tiny", prompt=prefix, suffix=suffix, max_tokens=12, temperature=0, extra_body={"editor_rules": False}
        )  # the raw FIM output
        hand = httpx.post(
            up_url + "/completions",
            json={"prompt": formats.fim_prompt(prefix, suffix), "max_tokens": 12, "temperature": 0},
            timeout=60,
        ).json()
        assert via.choices[0].text == hand["choices"][0]["text"]
        assert hand["usage"]["prompt_tokens"] == len(front_engine.encode(formats.fim_prompt(prefix, suffix)))
    finally:
        if front is not None:
            front.should_exit = True
            thread.join(timeout=10)
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.alone
def test_the_front_stops_on_sigterm_as_serve_does(fronted, tiny_base_model, tmp_path):
    """`dscoder serve --upstream` ends on SIGTERM as `dscoder serve` does: no traceback, the
    signal's own exit status (uvicorn raises it again once it has shut down)."""
    import signal
    import subprocess
    import sys
    import time

    engine, up_url, _ = fronted
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dscoder",
            "serve",
            "--upstream",
            up_url + "/v1",
            "--upstream-key",
            "upstream-key",
            "--tokenizer",
            str(tiny_base_model),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in err, err


SMALL = 64  # the context the small upstream below says it has


def small_upstream(tokenizer_dir, says: str):
    """An OpenAI-compatible server with a SMALL context, which it reports as vLLM does
    (`max_model_len` in its model list) or as llama.cpp's server does (`n_ctx` in /props, under
    `default_generation_settings` or, in older versions, at the top level). Like vLLM, it refuses
    a prompt that does not leave room for the answer; others get ' pass'."""
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from dscoder import tokenizer as tokenizer_lib

    tokenizer, app = tokenizer_lib.load(tokenizer_dir), FastAPI()

    @app.get("/v1/models")
    async def models():
        card = {"id": "small", "object": "model"} | ({"max_model_len": SMALL} if says == "max_model_len" else {})
        return {"object": "list", "data": [card]}

    @app.get("/props")
    async def props():
        if says == "max_model_len":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return {"n_ctx": SMALL} if says == "old n_ctx" else {"default_generation_settings": {"n_ctx": SMALL}}

    @app.post("/v1/completions")
    async def completions(body: dict):
        tokens = len(tokenizer(body["prompt"])["input_ids"])
        if tokens + body["max_tokens"] > SMALL:
            return JSONResponse(
                {
                    "error": {
                        "message": f"This model's maximum context length is {SMALL} tokens; "
                        f"the request has {tokens} + {body['max_tokens']}",
                        "code": 400,
                    }
                },
                400,
            )
        chunk = {"choices": [{"text": " pass", "index": 0, "finish_reason": "stop"}]}
        return StreamingResponse(
            iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]), media_type="text/event-stream"
        )

    return app


@pytest.mark.parametrize("says", ["max_model_len", "n_ctx", "old n_ctx"])
def test_the_front_takes_the_context_the_upstream_says(tiny_base_model, says):
    """Against an upstream with a context smaller than the tokenizer folder's config says, a prompt
    too long for it is the local server's 400, not the upstream's refusal as a 502; an insertion
    is fitted to it."""
    import threading
    import time

    import uvicorn
    from fastapi.testclient import TestClient

    from dscoder.infer.engine import Engine
    from dscoder.infer.server import create_app
    from dscoder.infer.upstream import UpstreamEngine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    upstream = uvicorn.Server(
        uvicorn.Config(small_upstream(tiny_base_model, says), host="127.0.0.1", port=port, log_level="critical")
    )
    up_thread = threading.Thread(target=upstream.run, daemon=True)
    up_thread.start()
    while not upstream.started:
        time.sleep(0.02)
    front = front_thread = None
    try:
        engine = UpstreamEngine.connect(f"http://127.0.0.1:{port}/v1", None, None, tiny_base_model)
        assert engine.name == "small" and engine.context == SMALL
        front, front_thread, front_url = start(engine)
        client = openai.OpenAI(base_url=front_url + "/v1", api_key=KEY, max_retries=0)
        long = "def add(a, b):\n    return a + b\n\n" * 10
        assert len(engine.encode(long)) > SMALL
        with pytest.raises(openai.BadRequestError) as exc:
            client.completions.create(model="small", prompt=long, max_tokens=4)
        with TestClient(create_app(Engine.load(tiny_base_model, context=SMALL))) as local:
            said_locally = local.post("/v1/completions", json={"prompt": long, "max_tokens": 4})
        assert said_locally.status_code == 400 and exc.value.body == said_locally.json()["error"]
        assert exc.value.body["code"] == "context_length_exceeded" and f"is {SMALL} tokens" in exc.value.body["message"]
        infill = httpx.post(
            front_url + "/infill",
            json={"input_prefix": long, "input_suffix": "\n", "n_predict": 4},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert infill.status_code == 200 and infill.json()["truncated"] is True, infill.text
        assert client.completions.create(model="small", prompt="x = ", max_tokens=4).choices[0].text == " pass"
    finally:
        for server, thread in ((front, front_thread), (upstream, up_thread)):
            if server is not None:
                server.should_exit = True
                thread.join(timeout=10)
