"""Evaluation through an OpenAI-compatible server, the instruct evaluation prompts, the
reproduction manifest (run.json, report, rerun) and the contamination report."""

import gzip
import json
import socket
from pathlib import Path

import pytest

from conftest import need_shared
from dscoder.cli import main
from dscoder.evaluate.benchmarks import instruct_completion, tasks
from dscoder.infer import prompts

pytest.importorskip("uvicorn")
from test_server import KEY, start  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def shared(name: str) -> Path:
    """A benchmark file of the shared data (the test skips where that folder is absent)."""
    return need_shared(SHARED / name)


@pytest.fixture(scope="module")
def served(tiny_base_model):
    from dscoder.infer.engine import Engine

    server, thread, url = start(Engine.load(tiny_base_model))
    yield url + "/v1"
    server.should_exit = True
    thread.join(timeout=10)


def rows(path: Path) -> dict:
    return {(r["task_id"], r["completion_id"]): r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("benchmark", ["HumanEval.jsonl.gz", "HumanEval-SingleLineInfilling.jsonl.gz"])
def test_samples_through_the_server_are_those_of_local_generation(served, tiny_base_model, tmp_path, benchmark):
    """Greedy samples through `dscoder serve` (completions; FIM through `suffix`) equal local
    generation with the same model, raw text and cleaned completion alike."""
    bench = str(shared(benchmark))
    common = ["--benchmark", bench, "--limit", "4", "--max-new-tokens", "24"]
    assert (
        main(["eval", "generate", "--model", str(tiny_base_model), "--out", str(tmp_path / "local.jsonl"), *common])
        == 0
    )
    assert (
        main(
            [
                "eval",
                "generate",
                "--api-base",
                served,
                "--api-key",
                KEY,
                "--concurrency",
                "3",
                "--out",
                str(tmp_path / "api.jsonl"),
                *common,
            ]
        )
        == 0
    )
    local, api = rows(tmp_path / "local.jsonl"), rows(tmp_path / "api.jsonl")
    assert len(local) == 4 and local.keys() == api.keys()
    for key in local:
        assert api[key]["completion"] == local[key]["completion"]
    if "Infilling" in benchmark:  # one stop sequence: the server cuts where the engine does
        assert [r["raw"] for r in api.values()] == [r["raw"] for r in local.values()]
    else:  # the server takes four stop sequences; the rest are cut here, as the cleaning does locally
        assert any(r["completion"] for r in api.values())
    # resumed: nothing left to do, nothing written twice
    assert (
        main(
            ["eval", "generate", "--api-base", served, "--api-key", KEY, "--out", str(tmp_path / "api.jsonl"), *common]
        )
        == 0
    )
    assert len((tmp_path / "api.jsonl").read_text().splitlines()) == 4


def test_server_mistakes_are_one_line(served, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    common = ["--benchmark", str(shared("HumanEval.jsonl.gz")), "--limit", "1", "--out", str(tmp_path / "s.jsonl")]
    for flags, said in (
        ([f"http://127.0.0.1:{free}/v1"], "cannot reach"),
        ([served, "--api-key", "wrong"], "API key"),
        ([served, "--api-key", KEY, "--api-model", "nonesuch"], "nonesuch"),
        (["127.0.0.1:8000"], "expected http://"),
    ):
        assert main(["eval", "generate", "--api-base", *flags, *common]) != 0
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
    assert not (tmp_path / "s.jsonl").exists()
    assert main(["eval", "generate", *common]) != 0
    assert "--model" in capsys.readouterr().err


def test_instruct_prompts_are_the_released_ones():
    _, humaneval = tasks(shared("HumanEval.jsonl.gz"))
    task = humaneval[0]
    turn = prompts.instruct_messages(task)[0]["content"]
    assert turn.startswith(
        "Please continue to complete the function. You are not allowed to modify the given code and "
        "do the completion only. Please return all completed function in a codeblock. Here is the "
        "given code to do completion:\n```python\nfrom typing import List"
    )
    assert turn.endswith(task.record["prompt"].strip() + "\n```")
    _, mbpp = tasks(shared("mbpp.jsonl"))
    turn = prompts.instruct_messages(mbpp[0])[0]["content"]
    assert turn.startswith(
        "Please refer the given examples and generate a python function for my problem.\n"
        "Examples are listed as follows:\n- Example 1:\n>>> Problem:\n"
    )
    assert "\n\n- Example 2:\n" in turn and "\n>>> Code:\n```python\n" in turn
    assert turn.split("Here is my problem:\n")[1] == (
        f">>> Problem:\n{mbpp[0].record['text'].strip()}\n>>> Test Cases:\n"
        + "\n".join(mbpp[0].record["test_list"])
        + "\n"
    )
    with pytest.raises(Exception, match="--chat"):
        prompts.instruct_messages(tasks(shared("HumanEval-SingleLineInfilling.jsonl.gz"))[1][0])


def test_code_is_taken_from_the_answer_as_the_released_scripts_do():
    _, humaneval = tasks(shared("HumanEval.jsonl.gz"), chat=True)
    task = humaneval[0]  # has_close_elements, with `from typing import List` before it
    answer = (
        "Sure:\n```python\ndef has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold "
        "for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```\nDone."
    )
    completion = instruct_completion(task, answer)
    assert completion.startswith("from typing import List\ndef has_close_elements(")
    program = task.program(completion)
    assert program.startswith("import math\n") and program.endswith("check(has_close_elements)\n")
    scope: dict = {}
    exec(program.replace(f"check({task.record['entry_point']})", ""), scope)
    scope["check"](scope["has_close_elements"])  # the program the sandbox runs passes
    assert instruct_completion(task, "no code here") == task.record["prompt"] + "\nno code here"
    _, mbpp = tasks(shared("mbpp.jsonl"))
    assert instruct_completion(mbpp[0], "x\n```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"
    assert instruct_completion(mbpp[0], "def f(): pass") == "def f(): pass"


def test_chat_evaluation_of_an_instruct_model_through_the_server(tiny_instruct_model, tmp_path):
    from dscoder.infer.engine import Engine

    engine = Engine.load(tiny_instruct_model)
    server, thread, url = start(engine)
    try:
        common = ["--benchmark", str(shared("HumanEval.jsonl.gz")), "--limit", "2", "--max-new-tokens", "16", "--chat"]
        assert (
            main(["eval", "generate", "--model", str(tiny_instruct_model), "--out", str(tmp_path / "l.jsonl"), *common])
            == 0
        )
        assert (
            main(
                [
                    "eval",
                    "generate",
                    "--api-base",
                    url + "/v1",
                    "--api-key",
                    KEY,
                    "--out",
                    str(tmp_path / "a.jsonl"),
                    *common,
                ]
            )
            == 0
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    local, api = rows(tmp_path / "l.jsonl"), rows(tmp_path / "a.jsonl")
    assert {k: r["raw"] for k, r in local.items()} == {k: r["raw"] for k, r in api.items()}
    task = tasks(shared("HumanEval.jsonl.gz"), chat=True)[1][0]
    assert local[(task.task_id, 0)]["completion"] == instruct_completion(task, local[(task.task_id, 0)]["raw"])


def test_run_json_records_every_choice_and_rerun_repeats_it(tiny_base_model, tmp_path, capsys):
    bench = tmp_path / "he.jsonl"
    records = [json.loads(line) for line in gzip.open(shared("HumanEval.jsonl.gz"), "rt")][:2]
    bench.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, again = tmp_path / "first", tmp_path / "again"
    assert (
        main(
            [
                "eval",
                "run",
                "--model",
                str(tiny_base_model),
                "--benchmark",
                str(bench),
                "--out",
                str(first),
                "--max-new-tokens",
                "16",
                "--timeout",
                "5",
            ]
        )
        == 0
    )
    record = json.loads((first / "run.json").read_text())
    source = record["source"]
    assert source["generation"] == {"temperature": 0.0, "top_p": 0.95, "max_new_tokens": 16, "seed": 0}
    assert source["prompt"]["kind"] == "base" and "\ndef" in source["stop"] and source["max_new_tokens"] == 16
    assert source["postprocessing"] and len(source["fingerprint"]) == 16 and record["scope"] == {"n": 1, "limit": None}
    assert record["benchmark"]["sha256"] and record["execution"]["timeout"] == 5.0
    assert record["software"]["dscoder"] and record["machine"]["cpus"] and record["started"] <= record["finished"]
    samples = [json.loads(line) for line in (first / "samples.jsonl").read_text().splitlines()]
    assert all("raw" in s for s in samples)
    capsys.readouterr()
    assert main(["eval", "rerun", str(first), "--out", str(again)]) == 0
    assert rows(again / "samples.jsonl").keys() == rows(first / "samples.jsonl").keys()
    assert [r["completion"] for r in rows(again / "samples.jsonl").values()] == [
        r["completion"] for r in rows(first / "samples.jsonl").values()
    ]
    capsys.readouterr()
    assert main(["eval", "report", str(first), str(again)]) == 0
    text = capsys.readouterr().out
    assert "same settings" in text
    # a run with another stop or token limit is flagged as not comparable
    other = tmp_path / "other"
    assert (
        main(
            [
                "eval",
                "run",
                "--model",
                str(tiny_base_model),
                "--benchmark",
                str(bench),
                "--out",
                str(other),
                "--max-new-tokens",
                "8",
                "--timeout",
                "5",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "report", str(first), str(other)]) == 0
    text = capsys.readouterr().out
    assert "changes scores" in text and "max_new_tokens" in text and "| 16 | 8 |" in text


def test_contamination_finds_the_leaked_task(small_corpus, tmp_path, capsys):
    import sysconfig

    leaked = (Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text()[800:1600]
    records = [json.loads(line) for line in gzip.open(shared("HumanEval.jsonl.gz"), "rt")][:3]
    records[1]["canonical_solution"] = leaked
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert (
        main(["eval", "contamination", "--benchmark", str(bench), str(small_corpus), "--out", str(tmp_path / "c.json")])
        == 0
    )
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["contaminated_tasks"] == 1 and report["tasks"] == 3
    assert [r["task_id"] for r in report["per_task"] if r["contaminated"]] == ["HumanEval/1"]
    assert report["per_task"][1]["fields"].get("canonical_solution", 0) >= 1
    assert "1 of 3 tasks" in capsys.readouterr().out
    assert main(["eval", "contamination", "--benchmark", str(bench), str(tmp_path)]) != 0
    assert "not a corpus" in capsys.readouterr().err


def test_instruct_answers_without_a_code_block_are_counted(tiny_instruct_model, tmp_path, capsys):
    bench = tmp_path / "he.jsonl"
    records = [json.loads(line) for line in gzip.open(shared("HumanEval.jsonl.gz"), "rt")][:2]
    bench.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert (
        main(
            [
                "eval",
                "run",
                "--model",
                str(tiny_instruct_model),
                "--chat",
                "--benchmark",
                str(bench),
                "--out",
                str(tmp_path / "r"),
                "--max-new-tokens",
                "8",
                "--timeout",
                "5",
            ]
        )
        == 0
    )
    samples = [json.loads(line) for line in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    missing = sum("```python\n" not in s["raw"].lower() for s in samples)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert missing and summary["answers_without_code_block"] == missing
    assert f"{missing} instruct answers had no code block" in capsys.readouterr().out


class Flaky:
    """An OpenAI-compatible server that misbehaves on request: malformed JSON, a stream cut
    mid-way, a 400 after some answers."""

    def __init__(self):
        from fastapi import FastAPI
        from fastapi.responses import PlainTextResponse, StreamingResponse

        self.mode, self.calls = "ok", 0
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "m", "object": "model"}]}

        @app.post("/v1/completions")
        async def completions(body: dict):
            self.calls += 1
            if self.mode == "garbled-once" and self.calls == 1:
                return PlainTextResponse("<html>proxy error</html>")
            if self.mode == "fail-after-2" and self.calls > 2:
                return PlainTextResponse('{"error": {"message": "boom"}}', status_code=400)
            if body.get("stream"):

                async def cut():
                    yield 'data: {"choices": [{"text": "par", "finish_reason": null}]}\n\n'
                    raise RuntimeError("connection dropped")

                return StreamingResponse(cut(), media_type="text/event-stream")
            return {
                "choices": [{"text": f" answer {self.calls}", "finish_reason": "stop"}],
                "usage": {"completion_tokens": 2},
            }

        self.app = app


@pytest.fixture
def flaky():
    import threading
    import time

    import uvicorn

    server = Flaky()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        time.sleep(0.02)
    yield server, f"http://127.0.0.1:{port}/v1"
    runner.should_exit = True
    thread.join(timeout=10)


def test_malformed_answers_are_retried_and_cut_streams_are_one_error(flaky):
    import asyncio

    from dscoder.infer.remote import Endpoint, RemoteError

    server, url = flaky

    async def ask(mode: str):
        server.mode, server.calls = mode, 0
        endpoint = Endpoint(url, model="m", retries=2, backoff=0.01)
        try:
            if mode == "stream":
                return [d async for d in endpoint.stream("x", 4)]
            return await endpoint.complete("x", 4)
        finally:
            await endpoint.close()

    reply = asyncio.run(ask("garbled-once"))
    assert reply.text == " answer 2" and server.calls == 2  # the malformed answer was asked again
    with pytest.raises(RemoteError, match="cannot reach|RemoteProtocolError|incomplete"):
        asyncio.run(ask("stream"))


def test_a_failed_run_resumes_where_it_stopped(flaky, tmp_path, capsys):
    server, url = flaky
    server.mode = "fail-after-2"
    out = tmp_path / "s.jsonl"
    common = [
        "eval",
        "generate",
        "--api-base",
        url,
        "--benchmark",
        str(shared("HumanEval.jsonl.gz")),
        "--limit",
        "5",
        "--concurrency",
        "1",
        "--out",
        str(out),
    ]
    assert main(common) != 0
    err = capsys.readouterr().err
    assert "boom" in err and "task HumanEval/2" in err and "Traceback" not in err
    assert [r["task_id"] for r in map(json.loads, out.read_text().splitlines())] == ["HumanEval/0", "HumanEval/1"]
    server.mode = "ok"
    assert main(common) == 0
    assert sorted(r["task_id"] for r in map(json.loads, out.read_text().splitlines())) == [
        f"HumanEval/{i}" for i in range(5)
    ]
    assert server.calls == 3 + 3  # three failed or answered before, only the three missing asked again
