"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) for one model folder.

- `GET /v1/models`, `GET /health`
- `POST /v1/completions`: `prompt` (string or list), `suffix` (rendered as DeepSeek FIM),
  `max_tokens`, `temperature`, `top_p`, `top_k`, `n`, `stop`, `seed`, `echo`, `logprobs` (up to 5),
  `stream` (SSE ending with `data: [DONE]`), `stream_options.include_usage`
- `POST /v1/chat/completions`: `messages` with the same options; streamed deltas
- `POST /infill`: llama.cpp's shape (`input_prefix`, `input_suffix`, `input_extra` as
  `{filename, text}` repository context, `n_predict`), which editor plugins use

Errors carry OpenAI's body (`{"error": {"message", "type", "param", "code"}}`) with a 4xx status,
and the server keeps serving. `create_app` builds the app without touching argv, for tests.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Literal

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from dscoder.config import AT_LEAST_ONE, schema_bounds
from dscoder.errors import SettingError, UserError
from dscoder.infer import prompts
from dscoder.infer.batching import _DONE, Batcher, Closing
from dscoder.infer.engine import Engine, Sequence, is_instruct
from dscoder.infer.remote import RemoteError
from dscoder.infer.sampling import SamplingParams
from dscoder.infer.upstream import UpstreamBatcher, UpstreamEngine

log = logging.getLogger("dscoder")
MAX_LOGPROBS = 5
MAX_N = 16  # choices per request
MAX_PROMPTS = 64  # prompts in one completions request
MAX_STOPS = 4  # stop sequences per request (as OpenAI)
SHUTDOWN_SECONDS = 3  # after SIGTERM, open connections get this long to take their last chunks


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server (more is a 4xx error, never a hung server)."""

    max_tokens: Annotated[int, AT_LEAST_ONE] = 1024
    """New tokens a request may ask for; chat and /infill requests that give no limit get this many."""
    max_body_bytes: Annotated[int, AT_LEAST_ONE] = 4 * 2**20
    """Largest request body."""
    infill_window: Annotated[int, AT_LEAST_ONE] = 2048
    """Most tokens of the current file an insertion keeps around the cursor (llama.cpp's n_batch):
    at least three quarters before it; repository context fills the rest of the context. What
    follows the cursor is prefilled again on every keystroke, so this bounds an editor's latency."""


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


class StreamOptions(BaseModel):
    include_usage: bool = False


def _bounded(default: Any, name: str, **extra: Any) -> Any:
    """A request field with the bounds SamplingParams declares for `name` (config.Range)."""
    return Field(default, **schema_bounds(SamplingParams, name), **extra)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float = _bounded(1.0, "temperature")
    top_p: float = _bounded(1.0, "top_p")
    top_k: int = _bounded(0, "top_k")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = _bounded(None, "seed")
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
    suffix: str | None = None
    max_tokens: int | None = _bounded(16, "max_new_tokens")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = _bounded(None, "max_new_tokens")
    max_completion_tokens: int | None = _bounded(None, "max_new_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise APIError(400, f"stop must be up to {MAX_STOPS} non-empty strings", "invalid_value", "stop")
    return stops


def _fit(engine: Engine, ids: list[int], max_tokens: int | None, limits: "ServeLimits",
         param: str = "max_tokens") -> int:
    """The new-token limit for a prompt (the server's cap when the request gives none); 4xx when
    the prompt and limit exceed the context, or the request asks more than the server's cap."""
    room = engine.context - len(ids)
    if room < 1:
        raise APIError(400, f"this model's maximum context length is {engine.context} tokens; the prompt has "
                            f"{len(ids)}", "context_length_exceeded", "prompt")
    if max_tokens is None:
        return min(room, limits.max_tokens)
    if max_tokens > room:
        raise APIError(400, f"this model's maximum context length is {engine.context} tokens; the prompt has "
                            f"{len(ids)} and {max_tokens} were requested", "context_length_exceeded", param)
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"{param} is {max_tokens}; this server gives at most {limits.max_tokens} new tokens "
                            "per request", "invalid_value", param)
    return max_tokens


def _limit(engine: Engine, max_tokens: int | None, limits: "ServeLimits", param: str) -> int:
    """The new-token limit of a request whose prompt is fitted to what is left of the context."""
    if max_tokens is None:
        return min(limits.max_tokens, engine.context // 4)
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"{param} is {max_tokens}; this server gives at most {limits.max_tokens} new tokens "
                            "per request", "invalid_value", param)
    if max_tokens > engine.context - 8:
        raise APIError(400, f"this model's maximum context length is {engine.context} tokens; {max_tokens} new "
                            "tokens were requested", "context_length_exceeded", param)
    return max_tokens


def _seeds(seed: int | None, n: int) -> list[int | None]:
    return [None if seed is None else seed + i for i in range(n)]


def _usage(sequences: list[Sequence], prompt_tokens: int) -> dict:
    completion = sum(len(s.token_ids) for s in sequences)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _finish(sequence: Sequence) -> str:
    return "length" if sequence.finish_reason == "length" else "stop"


def _completion_logprobs(engine: Engine, s: Sequence, offset: int) -> dict:
    convert = engine.tokenizer.convert_ids_to_tokens
    tokens = [convert(item["token_id"]) for item in s.logprobs]
    offsets, position = [], offset
    for item in s.logprobs:
        offsets.append(position)
        position += len(engine.tokenizer.decode([item["token_id"]], skip_special_tokens=True))
    return {"tokens": tokens, "token_logprobs": [item["logprob"] for item in s.logprobs],
            "top_logprobs": [dict(item["top"]) for item in s.logprobs], "text_offset": offsets}


def _chat_logprobs(engine: Engine, s: Sequence) -> dict:
    convert = engine.tokenizer.convert_ids_to_tokens
    return {"content": [{"token": convert(item["token_id"]), "logprob": item["logprob"], "bytes": None,
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in item["top"]]}
                        for item in s.logprobs]}


def create_app(engine: Engine, api_key: str | None = None, max_batch: int = 8,
               limits: ServeLimits = ServeLimits()):
    """The FastAPI application serving `engine`, holding every request to `limits`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    state: dict[str, Any] = {}
    warned: set[str] = set()

    def warn_once(message: str) -> None:
        """A warning about the kind of requests this server gets, said once, not once per request."""
        if message not in warned:
            warned.add(message)
            log.warning("%s (said once)", message)

    @asynccontextmanager
    async def lifespan(app):
        if isinstance(engine, UpstreamEngine):  # another server generates (serve --upstream)
            state["batcher"] = app.state.batcher = UpstreamBatcher(engine, max_batch)
        else:
            state["batcher"] = app.state.batcher = Batcher(engine, max_batch)
        yield
        state["batcher"].close()

    app = FastAPI(title="dscoder", lifespan=lifespan)

    def error_body(message: str, kind: str = "invalid_request_error", code=None, param=None) -> dict:
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.kind, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(Closing)
    async def closing(request, exc: Closing):
        return JSONResponse(error_body(str(exc), "server_error", "server_shutting_down"), status_code=503)

    @app.exception_handler(RemoteError)
    async def upstream_error(request, exc: RemoteError):
        status = 504 if exc.status == 504 else 502
        return JSONResponse(error_body(f"upstream: {exc}", "server_error", "upstream_error"), status_code=status)

    @app.exception_handler(UserError)
    async def user_error(request, exc: UserError):
        if isinstance(exc, SettingError):
            return JSONResponse(error_body(str(exc), code="invalid_value", param=exc.setting), status_code=400)
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a parameter
            return JSONResponse(error_body(f"malformed JSON body ({first.get('ctx', {}).get('error', 'invalid')})",
                                           code="invalid_json"), status_code=400)
        # a value that may take several forms fails once per form: report the form it was meant as
        errors = exc.errors()
        chosen = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), first)
        loc = [str(p) for p in chosen.get("loc", ())[1:]]
        where = loc[0] if loc else None
        detail = ".".join(p for p in loc[1:] if not p.startswith(("str", "list[", "int", "float", "function")))
        message = f"{where}{'.' + detail if detail else ''}: {chosen.get('msg', 'invalid value')}" if where \
            else chosen.get("msg", "invalid request body")
        return JSONResponse(error_body(message, param=where, code="invalid_value"), status_code=400)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path != "/health":
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return JSONResponse(error_body("invalid or missing API key", code="invalid_api_key"), status_code=401)
        length = request.headers.get("content-length")
        size = int(length) if length and length.isdigit() else len(await request.body()) if request.method == "POST" else 0
        if size > limits.max_body_bytes:
            return JSONResponse(error_body(f"the request body has {size} bytes; this server takes at most "
                                           f"{limits.max_body_bytes}", code="request_too_large"), status_code=413)
        return await call_next(request)

    def check_model(name: str | None) -> None:
        if name is not None and name != engine.name:
            raise APIError(404, f"the model '{name}' does not exist (this server has '{engine.name}')",
                           "model_not_found", "model")

    def sse(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"

    async def run_stream(sequences: list[Sequence], chunk, final_chunks, usage_chunk, done: bool = True):
        """Server-sent events: a chunk per delta, final chunks, usage, then [DONE] (OpenAI's
        streams; llama.cpp's own end with their final chunk)."""
        out, start = state["batcher"].stream(sequences)
        task = asyncio.create_task(start())
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    yield sse(error_body(str(item), "server_error"))
                    return
                index, delta = item
                if delta:
                    yield sse(chunk(index, delta))
            for data in final_chunks():
                yield sse(data)
            if usage_chunk is not None:
                yield sse(usage_chunk())
            if done:
                yield sse("[DONE]")
        finally:
            if not task.done():  # the client went away: free the rows
                for s in sequences:
                    s.cancelled.set()
                task.cancel()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "dscoder"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        check_model(body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise APIError(400, "prompt must not be empty", "invalid_value", "prompt")
        if body.suffix is not None and is_instruct(engine.tokenizer):
            warn_once("FIM request to an instruct model: rendered as asked, though insertion is a base-model skill")
        stops = _stops(body.stop)
        if body.logprobs is not None and isinstance(engine, UpstreamEngine):
            raise APIError(400, "logprobs are not available through --upstream", "invalid_value", "logprobs")
        sequences, prompt_tokens, echoes = [], 0, []
        for text in texts:
            if body.suffix is not None:  # fitted like /infill: the text nearest the hole is kept
                limit = _limit(engine, body.max_tokens, limits, "max_tokens")
                ids = prompts.insertion(engine, text, body.suffix, limit, window=limits.infill_window).ids
            else:
                ids = engine.encode(text)
                limit = _fit(engine, ids, body.max_tokens, limits)
            prompt_tokens += len(ids)
            for seed in _seeds(body.seed, body.n):
                params = SamplingParams(max_new_tokens=limit, temperature=body.temperature, top_p=body.top_p,
                                        top_k=body.top_k, seed=seed, stop=stops, logprobs=body.logprobs)
                sequences.append(Sequence(ids, params))
                echoes.append(text if body.echo else "")
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def choice(i: int, s: Sequence) -> dict:
            return {"text": echoes[i] + s.text, "index": i, "finish_reason": _finish(s),
                    "logprobs": _completion_logprobs(engine, s, len(echoes[i])) if body.logprobs is not None else None}

        if body.stream:
            started: set[int] = set()

            def chunk(i, delta):
                if i not in started:  # the echoed prompt leads the first chunk
                    started.add(i)
                    delta = echoes[i] + delta
                return {"id": ident, "object": "text_completion", "created": created, "model": engine.name,
                        "choices": [{"text": delta, "index": i, "logprobs": None, "finish_reason": None}]}

            def finals():
                for i, s in enumerate(sequences):
                    yield {"id": ident, "object": "text_completion", "created": created, "model": engine.name,
                           "choices": [{"text": "" if i in started else echoes[i], "index": i, "logprobs": None,
                                        "finish_reason": _finish(s)}]}

            usage = None
            if body.stream_options and body.stream_options.include_usage:
                def usage():
                    return {"id": ident, "object": "text_completion", "created": created, "model": engine.name,
                            "choices": [], "usage": _usage(sequences, prompt_tokens)}
            return StreamingResponse(run_stream(sequences, chunk, finals, usage), media_type="text/event-stream")
        await state["batcher"].run(sequences)
        return {"id": ident, "object": "text_completion", "created": created, "model": engine.name,
                "choices": [choice(i, s) for i, s in enumerate(sequences)], "usage": _usage(sequences, prompt_tokens)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        check_model(body.model)
        if not is_instruct(engine.tokenizer):
            warn_once("chat request to a base model: rendered with the chat template, answers may ramble")
        try:  # the prompt layer renders it; the new-token limit is the server's (_fit)
            prompt_ids = prompts.chat(engine, [m.model_dump() for m in body.messages], 1).ids
        except prompts.TooLong as exc:
            raise APIError(400, f"this model's maximum context length is {engine.context} tokens; the prompt has "
                                f"{exc.tokens}", "context_length_exceeded", "messages") from None
        except UserError as exc:
            raise APIError(400, str(exc), "invalid_value", "messages") from None
        limit = _fit(engine, prompt_ids, body.max_completion_tokens or body.max_tokens, limits, "max_tokens")
        stops = _stops(body.stop)
        if body.logprobs and isinstance(engine, UpstreamEngine):
            raise APIError(400, "logprobs are not available through --upstream", "invalid_value", "logprobs")
        top = (body.top_logprobs or 0) if body.logprobs else None
        sequences = [Sequence(prompt_ids, SamplingParams(max_new_tokens=limit, temperature=body.temperature,
                                                         top_p=body.top_p, top_k=body.top_k, seed=seed, stop=stops,
                                                         logprobs=top))
                     for seed in _seeds(body.seed, body.n)]
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            started: set[int] = set()

            def chunk(i, delta):
                d = {"content": delta} if i in started else {"role": "assistant", "content": delta}
                started.add(i)
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": engine.name,
                        "choices": [{"index": i, "delta": d, "logprobs": None, "finish_reason": None}]}

            def finals():
                for i, s in enumerate(sequences):
                    delta = {} if i in started else {"role": "assistant", "content": ""}
                    yield {"id": ident, "object": "chat.completion.chunk", "created": created, "model": engine.name,
                           "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": _finish(s)}]}

            usage = None
            if body.stream_options and body.stream_options.include_usage:
                def usage():
                    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": engine.name,
                            "choices": [], "usage": _usage(sequences, len(prompt_ids))}
            return StreamingResponse(run_stream(sequences, chunk, finals, usage), media_type="text/event-stream")
        await state["batcher"].run(sequences)
        choices = [{"index": i, "message": {"role": "assistant", "content": s.text}, "finish_reason": _finish(s),
                    "logprobs": _chat_logprobs(engine, s) if body.logprobs else None} for i, s in enumerate(sequences)]
        return {"id": ident, "object": "chat.completion", "created": created, "model": engine.name,
                "choices": choices, "usage": _usage(sequences, len(prompt_ids))}

    from dscoder.infer import llama_api

    llama_api.add_routes(app, engine, lambda: state["batcher"], lambda e, asked, param: _limit(e, asked, limits, param),
                         run_stream, APIError, limits.infill_window)

    return app


def require_serve_stack():
    """The uvicorn module, once FastAPI and uvicorn both import; a one-line UserError naming what
    is missing otherwise (either package, or one of their own dependencies)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UserError(f"serving needs the 'serve' extra (FastAPI, uvicorn), which does not import here "
                        f"({exc}): pip install 'dscoder[serve]'") from None
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a port already in use (or an address this machine does not
    have) is a one-line UserError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: {host}:{port} is already in use (another server?); choose another port") from None
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


def serve(engine: Engine, listener: socket.socket, api_key: str | None = None, max_batch: int = 8,
          limits: ServeLimits = ServeLimits()) -> None:
    """Serve on the bound `listener` until interrupted."""
    uvicorn = require_serve_stack()
    host, port = listener.getsockname()[:2]
    app = create_app(engine, api_key, max_batch, limits)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM or Ctrl-C: stop generating now, answer what is in flight
            if getattr(app.state, "batcher", None) is not None:
                app.state.batcher.stop()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS))
    log.info("serving %s on http://%s:%d (OpenAI API under /v1)", engine.name, host, port)
    server.run(sockets=[listener])
