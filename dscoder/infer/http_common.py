"""The request layer under the server's two dialects (the OpenAI one in openai_api.py, llama.cpp's
in llama_api.py): OpenAI's error body and the exceptions that become it, the access checks (API
key, body size), server-sent events, request fields bounded as SamplingParams bounds them,
`new_tokens`, the one rule for how long an answer may be, `insertion_stop`, the one rule for
where an insertion ends, and `adapter_for`, the one rule for which model a request's `model` names.

Routes find what they serve with on `request.app.state`, which create_app (server.py) sets:
`engine` (an Engine, or an UpstreamEngine in front of another server), `batcher`, `limits`
(ServeLimits), `api_key`, and `warned` (warnings already said).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Iterable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, model_validator

from dscoder import formats
from dscoder.config import schema_bounds
from dscoder.errors import SettingError, UserError
from dscoder.infer import prompts
from dscoder.infer.batching import DONE, Closing
from dscoder.infer.engine import Sequence
from dscoder.infer.remote import RemoteError
from dscoder.infer.sampling import SamplingParams

MIN_PROMPT = 8  # tokens an answer leaves at least for a prompt that is fitted to the rest of the context


class Body(BaseModel):
    """A request body of either dialect. JSON may escape half of a UTF-16 surrogate pair alone
    ("\\ud83d": an editor's text cut through an emoji); such a half becomes U+FFFD, as a UTF-8
    encoder makes it, so the request is answered instead of failing in the tokenizer."""

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        return formats.well_formed(data)[0]


class APIError(Exception):
    """A request the server refuses: an HTTP status (4xx) and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


def error_body(
    message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict:
    """OpenAI's error body, which both dialects answer with."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _reply(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code, param), status_code=status)


async def _refused(request: Request, exc: APIError) -> JSONResponse:
    return _reply(exc.status, exc.message, exc.kind, exc.code, exc.param)


async def _closing(request: Request, exc: Closing) -> JSONResponse:
    return _reply(503, str(exc), "server_error", "server_shutting_down")


async def _upstream_failed(request: Request, exc: RemoteError) -> JSONResponse:
    return _reply(504 if exc.status == 504 else 502, f"upstream: {exc}", "server_error", "upstream_error")


async def _user_error(request: Request, exc: UserError) -> JSONResponse:
    if isinstance(exc, SettingError):
        return _reply(400, str(exc), code="invalid_value", param=exc.setting)
    return _reply(400, str(exc))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that does not parse, or a field out of its bounds: 400 naming the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # its location is a character offset, not a parameter
        return _reply(400, f"malformed JSON body ({first.get('ctx', {}).get('error', 'invalid')})", code="invalid_json")
    # a value that may take several forms fails once per form: report the form it was meant as
    chosen = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), first)
    loc = [str(p) for p in chosen.get("loc", ())[1:]]
    where = loc[0] if loc else None
    detail = ".".join(p for p in loc[1:] if not p.startswith(("str", "list[", "int", "float", "function")))
    message = (
        f"{where}{'.' + detail if detail else ''}: {chosen.get('msg', 'invalid value')}"
        if where
        else chosen.get("msg", "invalid request body")
    )
    return _reply(400, message, code="invalid_value", param=where)


# FastAPI's exception_handlers: a handler is found along the exception's classes (RemoteError is a UserError)
ERROR_HANDLERS = {
    APIError: _refused,
    Closing: _closing,
    RemoteError: _upstream_failed,
    UserError: _user_error,
    RequestValidationError: _invalid,
}


async def guard(request: Request, call_next):
    """HTTP middleware: the API key (`Authorization: Bearer KEY`; /health needs none) and the
    body's size, checked before a route reads the body."""
    state = request.app.state
    if state.api_key and request.url.path != "/health":
        if request.headers.get("authorization", "") != f"Bearer {state.api_key}":
            return _reply(401, "invalid or missing API key", code="invalid_api_key")
    length = request.headers.get("content-length")
    size = int(length) if length and length.isdigit() else len(await request.body()) if request.method == "POST" else 0
    most = state.limits.max_body_bytes
    if size > most:
        return _reply(
            413, f"the request body has {size} bytes; this server takes at most {most}", code="request_too_large"
        )
    return await call_next(request)


def adapter_for(engine, model: str | None, checked: bool = True) -> str | None:
    """The LoRA adapter (`serve --lora`) a request's `model` names; None for the base model, named
    or not. Any other name is a 404 listing the names served, except that a server without
    adapters ignores the name where not `checked` (llama.cpp's routes: editors send any name)."""
    if model is None or model == engine.name or (not engine.adapters and not checked):
        return None
    if model in engine.adapters:
        return model
    names = ", ".join(f"'{name}'" for name in (engine.name, *engine.adapters))
    raise APIError(404, f"the model '{model}' does not exist (this server has {names})", "model_not_found", "model")


def bounded(default: Any, name: str, **extra: Any) -> Any:
    """A request field with the bounds SamplingParams declares for `name` (config.Range)."""
    return Field(default, **schema_bounds(SamplingParams, name), **extra)


def context_error(engine, param: str, prompt_tokens: int | None = None, asked: int | None = None) -> APIError:
    """The one answer to a request that does not fit the model's context, from every route."""
    said = ([f"the prompt has {prompt_tokens}"] if prompt_tokens is not None else []) + (
        [f"{asked} new tokens were requested"] if asked is not None else []
    )
    return APIError(
        400,
        f"this model's maximum context length is {engine.context} tokens; {' and '.join(said)}",
        "context_length_exceeded",
        param,
    )


def new_tokens(
    engine,
    asked: int | None,
    most: int,
    param: str = "max_tokens",
    prompt_tokens: int | None = None,
    default: int | None = None,
) -> int:
    """How long an answer may be: the new tokens a request gets, on every route of both dialects.

    `asked` is the request's own limit (`max_tokens`, `n_predict`; None when it gives none) and
    `most` the server's (--max-tokens); asking for more than `most` is a 400. A request that gives
    none gets `default` (/infill: an editor's few lines) or else `most`. Then the context
    (`engine.budget`): a fixed prompt of `prompt_tokens` and its answer must fit together, and a
    request that gives no limit gets what the prompt leaves. A prompt still to be fitted
    (`prompt_tokens` None: insertions, llama.cpp's text prompts) gets what the answer leaves: the
    answer leaves it MIN_PROMPT tokens at least, and a quarter of the context by default."""
    if prompt_tokens is not None and engine.budget(prompt_tokens, 1) < 1:
        raise context_error(engine, "prompt", prompt_tokens)
    if asked is None:
        wanted = min(default or most, most)
        return min(wanted, engine.context // 4) if prompt_tokens is None else engine.budget(prompt_tokens, wanted)
    if engine.budget(MIN_PROMPT if prompt_tokens is None else prompt_tokens, asked) < asked:
        raise context_error(engine, param, prompt_tokens, asked)
    if asked > most:
        raise APIError(
            400, f"{param} is {asked}; this server gives at most {most} new tokens per request", "invalid_value", param
        )
    return asked


def insertion_stop(prefix: str, suffix: str | None, editor_rules: bool, n_indent: int = 0) -> prompts.EditorStop | None:
    """Where an answer ends, on the routes of both dialects: an insertion (`suffix` given: /infill,
    /v1/completions with `suffix`) where an editor wants it (prompts.EditorStop, the cursor after
    `prefix`), unless the request asks for the raw FIM output (`"editor_rules": false`, a dscoder
    extension); that and any other answer end at EOS, a stop sequence or the token limit (None)."""
    return prompts.EditorStop.at(prefix, suffix, n_indent) if suffix is not None and editor_rules else None


MAX_PROMPT_MS = 600_000  # t_max_prompt_ms above ten minutes is a mistake, not a limit


def check_prompt_ms(value: int | None) -> int | None:
    """A request's `t_max_prompt_ms`: -1 (no limit) or 1..MAX_PROMPT_MS (a pydantic validator's body)."""
    if value is not None and value != -1 and not 1 <= value <= MAX_PROMPT_MS:
        raise ValueError(f"must be -1 (no limit) or 1..{MAX_PROMPT_MS} milliseconds")
    return value


def time_limit(request, asked_ms: int | None, adapter: str | None = None) -> prompts.TimeLimit | None:
    """The time an insertion's prompt may take to compute: the request's `t_max_prompt_ms`, else
    the server's --max-prompt-ms, against the engine's measured speed and prompt cache (the rows
    of the request's `adapter`); None without a limit or a measure (an upstream server keeps its
    own time)."""
    engine = request.app.state.engine
    ms = request.app.state.limits.max_prompt_ms if asked_ms is None else asked_ms
    if ms is None or ms < 0 or not hasattr(engine, "prefill_ms"):
        return None
    return prompts.TimeLimit(lambda ids: engine.prefill_ms(ids, adapter) or 0.0, ms)


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def event_stream(
    batcher,
    sequences: list[Sequence],
    chunk: Callable[[int, str], dict],
    finals: Callable[[], Iterable[dict]],
    usage: Callable[[], dict] | None = None,
    done: bool = True,
    slot=None,
) -> StreamingResponse:
    """Generate `sequences` as server-sent events: `chunk(index, delta)` per text delta, then
    `finals()`, `usage()` where given, and `[DONE]` (OpenAI's streams; llama.cpp's end with their
    final chunk). A client that goes away cancels its sequences, which frees their rows; `slot`
    as in batching.Batcher.run."""

    async def events():
        out, start = batcher.stream(sequences, slot)
        task = asyncio.create_task(start())
        try:
            while (item := await out.get()) is not DONE:
                if isinstance(item, Exception):
                    yield sse(error_body(str(item), "server_error"))
                    return
                index, delta = item
                if delta:
                    yield sse(chunk(index, delta))
            for data in finals():
                yield sse(data)
            if usage is not None:
                yield sse(usage())
            if done:
                yield sse("[DONE]")
        finally:
            if not task.done():  # the client went away: free the rows
                for s in sequences:
                    s.cancelled.set()
                task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")
