"""Soak test of `dscoder serve`: many clients at once, every kind of request, clients that leave
mid-stream, then SIGTERM with requests in flight. Loopback only, bounded in count and time.

A server on a free local port serves a small model (`--model DIR`, or a tiny preset with random
weights and a vocabulary learned here). Eight client threads send `--requests` requests (1,000)
mixing completions, `suffix` FIM, chat, streamed completions and chat, `n` > 1, `stop`, `/infill`
and streams the client abandons after two chunks. Printed: errors (goal 0), greedy outputs equal
to the same requests sent one at a time afterwards (goal 100%), p50/p95 latency, the server's
resident memory after warm-up and at the end (goal: growth under 5%), and how long the server
takes to stop after SIGTERM with streams in flight (goal: under 5 s).

    python bench/soak_server.py [--requests 1000] [--clients 8] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPTS = [
    "def add(a, b):\n",
    "import os\n\n\ndef list_files(path):\n",
    "class Stack:\n    def __init__(self):\n",
    "# read a JSON file\nimport json\n\n",
    'def fibonacci(n):\n    """The n-th Fibonacci number."""\n',
]


def tiny_model(work: Path) -> Path:
    """A tiny preset with random weights and a small vocabulary learned on json's sources."""
    import sysconfig
    from collections import Counter as Skips

    from dscoder import model as model_lib
    from dscoder import tokenizer as tokenizer_lib
    from dscoder.texts import read_texts

    tok_dir, folder = work / "tok", work / "model"
    texts = read_texts([Path(sysconfig.get_paths()["stdlib"]) / "json"], Skips())
    tokenizer_lib.save(tokenizer_lib.train(texts, 2000, show_progress=False), tok_dir)
    tok = tokenizer_lib.load(tok_dir)
    cfg = model_lib.hf_config(model_lib.get_preset("tiny").config, tok)
    model_lib.save(folder, cfg, tok_dir, model_lib.build(cfg, seed=0))
    return folder


def start_server(model: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dscoder",
            "-q",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--max-tokens",
            "256",
        ]
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_requests(count: int, seed: int) -> list[dict]:
    """The request mix: (kind, path, body, greedy) in a fixed random order."""
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        prompt, tokens = rng.choice(PROMPTS), rng.randint(8, 32)
        kind = rng.choice(["completion", "fim", "chat", "stream", "stream_chat", "n2", "stop", "infill", "leave"])
        if kind == "completion":
            body = ("/v1/completions", {"prompt": prompt, "max_tokens": tokens, "temperature": 0})
        elif kind == "fim":
            body = (
                "/v1/completions",
                {"prompt": prompt, "suffix": "\n    return result\n", "max_tokens": tokens, "temperature": 0},
            )
        elif kind in ("chat", "stream_chat"):
            body = (
                "/v1/chat/completions",
                {
                    "messages": [{"role": "user", "content": f"Complete: {prompt}"}],
                    "max_tokens": tokens,
                    "temperature": 0,
                    "stream": kind == "stream_chat",
                },
            )
        elif kind in ("stream", "leave"):
            body = (
                "/v1/completions",
                {"prompt": prompt, "max_tokens": 200 if kind == "leave" else tokens, "temperature": 0, "stream": True},
            )
        elif kind == "n2":
            body = ("/v1/completions", {"prompt": prompt, "max_tokens": tokens, "temperature": 0.8, "n": 2, "seed": i})
        elif kind == "stop":
            body = ("/v1/completions", {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stop": ["\n\n"]})
        else:
            body = ("/infill", {"input_prefix": prompt, "input_suffix": "\n", "n_predict": tokens, "temperature": 0})
        requests.append(
            {
                "kind": kind,
                "path": body[0],
                "body": body[1],
                "greedy": body[1].get("temperature") == 0 and kind != "leave",
            }
        )
    return requests


def send(client: httpx.Client, url: str, request: dict) -> tuple[str | None, float, str]:
    """(the text the request got, seconds, an error or "")."""
    start = time.perf_counter()
    body = request["body"]
    try:
        if not body.get("stream"):
            response = client.post(url + request["path"], json=body)
            if response.status_code != 200:
                return None, time.perf_counter() - start, f"status {response.status_code}: {response.text[:120]}"
            data = response.json()
            if request["path"] == "/infill":
                text = data["content"]
            elif "messages" in body:
                text = "\x00".join(c["message"]["content"] for c in data["choices"])
            else:
                text = "\x00".join(c["text"] for c in data["choices"])
            return text, time.perf_counter() - start, ""
        pieces = []
        with client.stream("POST", url + request["path"], json=body) as response:
            if response.status_code != 200:
                return None, time.perf_counter() - start, f"status {response.status_code}"
            for i, line in enumerate(response.iter_lines()):
                if request["kind"] == "leave" and i >= 2:
                    return None, time.perf_counter() - start, ""  # the client goes away mid-stream
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return None, time.perf_counter() - start, f"stream error: {chunk['error']}"
                for choice in chunk.get("choices", []):
                    pieces.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
        return "".join(pieces), time.perf_counter() - start, ""
    except httpx.HTTPError as exc:
        return None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}"


def sigterm_time(url: str, process: subprocess.Popen) -> float:
    """Seconds from SIGTERM to exit, with four long streams in flight."""
    started = threading.Semaphore(0)

    def stream():
        body = {"prompt": PROMPTS[0], "max_tokens": 256, "temperature": 1.0, "stream": True}
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
                for i, _ in enumerate(response.iter_lines()):
                    if i == 1:
                        started.release()
        except httpx.HTTPError:
            pass

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in threads:
        started.acquire(timeout=60)
    begin = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return float("inf")
    return time.monotonic() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", type=Path, help="model folder (default: a tiny preset with random weights)")
    parser.add_argument("--greedy-checks", type=int, default=150, help="greedy requests sent again one at a time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model = args.model or tiny_model(Path(work))
        process, url = start_server(model, max_batch=args.clients)
        requests = make_requests(args.requests, args.seed)
        client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=args.clients * 2))
        warm = 50
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda r: send(client, url, r), requests[:warm]))
            rss_warm = rss_mb(process.pid)
            start = time.perf_counter()
            results += list(pool.map(lambda r: send(client, url, r), requests[warm:]))
            wall = time.perf_counter() - start
        rss_end = rss_mb(process.pid)
        errors = [(r["kind"], e) for r, (_, _, e) in zip(requests, results) if e]
        greedy = [(r, text) for r, (text, _, e) in zip(requests, results) if r["greedy"] and not e][
            : args.greedy_checks
        ]
        same = sum(send(client, url, r)[0] == text for r, text in greedy)  # one at a time now
        latencies = sorted(seconds for _, seconds, _ in results)
        stop_seconds = sigterm_time(url, process)
    kinds = Counter(r["kind"] for r in requests)
    print(
        f"{len(requests)} requests from {args.clients} clients in {wall:.1f} s after {warm} to warm up "
        f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"
    )
    print(f"  errors                 {len(errors)}" + (f"  e.g. {errors[0]}" if errors else "") + "  (goal 0)")
    print(f"  greedy as sent alone   {same}/{len(greedy)} = {100 * same / max(len(greedy), 1):.1f}%  (goal 100%)")
    print(
        f"  latency                p50 {1000 * latencies[len(latencies) // 2]:.0f} ms, "
        f"p95 {1000 * latencies[int(len(latencies) * 0.95)]:.0f} ms"
    )
    print(
        f"  server memory          {rss_warm:.0f} MB after warm-up, {rss_end:.0f} MB at the end: "
        f"{100 * (rss_end - rss_warm) / rss_warm:+.1f}%  (goal under +5%)"
    )
    print(f"  stop after SIGTERM     {stop_seconds:.1f} s with 4 streams in flight  (goal under 5 s)")


if __name__ == "__main__":
    main()
