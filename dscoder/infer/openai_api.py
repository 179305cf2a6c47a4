"""OpenAI's dialect, as its clients and editor plugins use it:

- `GET /v1/models`
- `POST /v1/completions`: `prompt` (string or list), `suffix` (rendered as DeepSeek FIM),
  `max_tokens`, `temperature`, `top_p`, `top_k`, `n`, `stop`, `seed`, `echo`, `logprobs` (up to 5),
  `stream` (SSE ending with `data: [DONE]`), `stream_options.include_usage`, and `editor_rules`
  (a dscoder extension, below)
- `POST /v1/chat/completions`: `messages` with the same options; streamed deltas

Prompts come from the one prompt layer (prompts.py); how many new tokens each gets, and the
error when it does not fit, from the request layer (http_common.new_tokens).

A completion with `suffix` (a string, the empty string included) is an editor's insertion, as
Continue's OpenAI provider and Tabby send it, and ends where `/infill` ends one
(http_common.insertion_stop, prompts.EditorStop): with text after the cursor on its line, at the
end of that line; otherwise before a line indented less than the cursor's line, or at a blank line
after some code; text repeating the rest of the cursor's line is dropped. `max_tokens` keeps
OpenAI's meaning (16 when absent). `"editor_rules": false` asks for the raw FIM output instead,
until EOS, a stop sequence or `max_tokens` (benchmarks sampled through `--api-base` send it).
An editor's insertion also gets /infill's latency policy: its prompt is fitted to the time the
request's `t_max_prompt_ms` (a dscoder extension) or the server's `--max-prompt-ms` gives, a
newer request from the same client on the same line cancels it, and the next line's prompt is
computed while the server is idle.

With `serve --lora NAME=DIR`, `model` picks the LoRA adapter a request runs under (vLLM's
`--lora-modules`): an adapter's name, or the base model's (or none) for the base; another name
is a 404 listing the served names (http_common.adapter_for), and `/v1/models` lists the base and
each adapter (`parent`: the base, `root`: the adapter's folder).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dscoder.errors import UserError
from dscoder.infer import prompts
from dscoder.infer.engine import Sequence, is_instruct
from dscoder.infer.http_common import (
    APIError,
    Body,
    adapter_for,
    bounded,
    check_prompt_ms,
    context_error,
    event_stream,
    insertion_stop,
    new_tokens,
    time_limit,
)
from dscoder.infer.sampling import SamplingParams

log = logging.getLogger("dscoder")
MAX_LOGPROBS = 5
MAX_N = 16  # choices per request
MAX_PROMPTS = 64  # prompts in one completions request
MAX_STOPS = 4  # stop sequences per request (as OpenAI)

router = APIRouter()


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(Body):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float = bounded(1.0, "temperature")
    top_p: float = bounded(1.0, "top_p")
    top_k: int = bounded(0, "top_k")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = bounded(None, "seed")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> list[str]:
        """One stop sequence or a list of them, kept as a list."""
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"must be up to {MAX_STOPS} non-empty strings")
        return stops

    def params(self, max_new_tokens: int, seed: int | None, logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=seed,
            stop=tuple(self.stop or ()),
            logprobs=logprobs,
        )

    def seeds(self) -> list[int | None]:
        """One seed per choice: choice i samples with seed + i."""
        return [None if self.seed is None else self.seed + i for i in range(self.n)]

    def with_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
    suffix: str | None = None
    editor_rules: bool = True  # an insertion ends where an editor wants it; false: the raw FIM output
    t_max_prompt_ms: int | None = None  # an insertion's prompt is fitted to be computed in this time
    _t_max_prompt_ms = field_validator("t_max_prompt_ms")(check_prompt_ms)
    max_tokens: int | None = bounded(16, "max_new_tokens")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = bounded(None, "max_new_tokens")
    max_completion_tokens: int | None = bounded(None, "max_new_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


def _engine_for(request: Request, model: str | None, logprobs: bool):
    """(engine, adapter): the engine serving the request and the LoRA adapter its `model` names
    (None: the base), once the logprobs it asks for are ones the engine gives (an upstream
    server's are not forwarded)."""
    engine = request.app.state.engine
    adapter = adapter_for(engine, model)
    if logprobs and not getattr(engine, "gives_logprobs", True):
        raise APIError(400, "logprobs are not available through --upstream", "invalid_value", "logprobs")
    return engine, adapter


def _warn_once(request: Request, message: str) -> None:
    """A warning about the kind of requests this server gets, said once, not once per request."""
    warned = request.app.state.warned
    if message not in warned:
        warned.add(message)
        log.warning("%s (said once)", message)


def _usage(sequences: list[Sequence], prompt_tokens: int) -> dict:
    completion = sum(len(s.token_ids) for s in sequences)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _finish(sequence: Sequence) -> str:
    return "length" if sequence.finish_reason == "length" else "stop"


def _completion_logprobs(engine, s: Sequence, offset: int) -> dict:
    convert = engine.tokenizer.convert_ids_to_tokens
    tokens = [convert(item["token_id"]) for item in s.logprobs]
    offsets, position = [], offset
    for item in s.logprobs:
        offsets.append(position)
        position += len(engine.tokenizer.decode([item["token_id"]], skip_special_tokens=True))
    return {
        "tokens": tokens,
        "token_logprobs": [item["logprob"] for item in s.logprobs],
        "top_logprobs": [dict(item["top"]) for item in s.logprobs],
        "text_offset": offsets,
    }


def _chat_logprobs(engine, s: Sequence) -> dict:
    convert = engine.tokenizer.convert_ids_to_tokens
    return {
        "content": [
            {
                "token": convert(item["token_id"]),
                "logprob": item["logprob"],
                "bytes": None,
                "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in item["top"]],
            }
            for item in s.logprobs
        ]
    }


def _head(model: str, prefix: str, kind: str) -> dict:
    """The fields every answer and chunk of one request repeats (`model`: the name served)."""
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": model}


@router.get("/v1/models")
async def models(request: Request):
    engine = request.app.state.engine
    entry = {"object": "model", "created": 0, "owned_by": "dscoder"}
    adapters = [{"id": a.name, **entry, "parent": engine.name, "root": str(a.folder)} for a in engine.adapters.values()]
    return {"object": "list", "data": [{"id": engine.name, **entry}, *adapters]}


def _completion_prompt(
    engine, text: str, body: CompletionRequest, request: Request, adapter: str | None
) -> tuple[list[int], int]:
    """A completions prompt's ids and its new tokens. With `suffix` it is an insertion, fitted
    like /infill (the text nearest the hole is kept, and what can be computed in the time the
    request or the server gives); without, the prompt must fit as it is."""
    limits = request.app.state.limits
    if body.suffix is None:
        ids = engine.encode(text)
        return ids, new_tokens(engine, body.max_tokens, limits.max_tokens, prompt_tokens=len(ids))
    if is_instruct(engine.tokenizer):
        _warn_once(
            request, "FIM request to an instruct model: rendered as asked, though insertion is a base-model skill"
        )
    limit = new_tokens(engine, body.max_tokens, limits.max_tokens)
    return prompts.insertion(
        engine,
        text,
        body.suffix,
        limit,
        window=limits.infill_window,
        time_limit=time_limit(request, body.t_max_prompt_ms, adapter),
    ).ids, limit


def _editor_work(request: Request, body: CompletionRequest, texts: list[str], limit: int, adapter: str | None):
    """For an editor's insertion (Continue's and Tabby's OpenAI providers: one prompt, a
    suffix): the slot whose older request it cancels (the same client, adapter and file text up
    to the cursor's line) and, computed while idle, the next line's prompt as if Enter were pressed
    now (the new line indented as the cursor's)."""
    if body.suffix is None or len(texts) != 1 or not body.editor_rules:
        return None
    text, client = texts[0], ("client", request.client.host if request.client else None, "v1", adapter)
    line = text[text.rfind("\n") + 1 :]
    guess = text + "\n" + line[: len(line) - len(line.lstrip(" \t"))]
    limits = request.app.state.limits
    request.app.state.batcher.ahead(
        client,
        [prompts.insertion(request.app.state.engine, guess, body.suffix, limit, window=limits.infill_window).ids],
        adapter,
    )
    return (*client, text[: len(text) - len(line)])


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    engine, adapter = _engine_for(request, body.model, body.logprobs is not None)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not texts:
        raise APIError(400, "prompt must not be empty", "invalid_value", "prompt")
    sequences, prompt_tokens, echoes = [], 0, []
    for text in texts:
        ids, limit = _completion_prompt(engine, text, body, request, adapter)
        prompt_tokens += len(ids)
        editor = insertion_stop(text, body.suffix, body.editor_rules)
        sequences += [
            Sequence(ids, body.params(limit, seed, body.logprobs), editor=editor, adapter=adapter)
            for seed in body.seeds()
        ]
        echoes += [text if body.echo else ""] * body.n
    head = _head(adapter or engine.name, "cmpl", "text_completion")
    batcher, slot = request.app.state.batcher, _editor_work(request, body, texts, limit, adapter)
    if body.stream:
        return _completion_events(batcher, head, sequences, echoes, prompt_tokens, body.with_usage(), slot)
    await batcher.run(sequences, slot)
    choices = [
        {
            "text": echoes[i] + s.text,
            "index": i,
            "finish_reason": _finish(s),
            "logprobs": _completion_logprobs(engine, s, len(echoes[i])) if body.logprobs is not None else None,
        }
        for i, s in enumerate(sequences)
    ]
    return head | {"choices": choices, "usage": _usage(sequences, prompt_tokens)}


def _completion_events(
    batcher, head: dict, sequences: list[Sequence], echoes: list[str], prompt_tokens: int, with_usage: bool, slot=None
):
    """A completions stream: each choice's echoed prompt leads its first chunk."""
    started: set[int] = set()

    def chunk(i: int, delta: str) -> dict:
        if i not in started:
            started.add(i)
            delta = echoes[i] + delta
        return head | {"choices": [{"text": delta, "index": i, "logprobs": None, "finish_reason": None}]}

    def finals():
        for i, s in enumerate(sequences):
            yield head | {
                "choices": [
                    {
                        "text": "" if i in started else echoes[i],
                        "index": i,
                        "logprobs": None,
                        "finish_reason": _finish(s),
                    }
                ]
            }

    def usage() -> dict:
        return head | {"choices": [], "usage": _usage(sequences, prompt_tokens)}

    return event_stream(batcher, sequences, chunk, finals, usage if with_usage else None, slot=slot)


def _chat_prompt(engine, body: ChatRequest) -> list[int]:
    """The chat prompt's ids, rendered by the prompt layer; one that does not fit is refused."""
    try:
        return prompts.chat(engine, [m.model_dump() for m in body.messages], 1).ids
    except prompts.TooLong as exc:
        raise context_error(engine, "messages", exc.tokens) from None
    except UserError as exc:
        raise APIError(400, str(exc), "invalid_value", "messages") from None


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    engine, adapter = _engine_for(request, body.model, body.logprobs)
    if not is_instruct(engine.tokenizer):
        _warn_once(request, "chat request to a base model: rendered with the chat template, answers may ramble")
    prompt_ids = _chat_prompt(engine, body)
    limit = new_tokens(
        engine,
        body.max_completion_tokens or body.max_tokens,
        request.app.state.limits.max_tokens,
        prompt_tokens=len(prompt_ids),
    )
    top = (body.top_logprobs or 0) if body.logprobs else None
    sequences = [Sequence(prompt_ids, body.params(limit, seed, top), adapter=adapter) for seed in body.seeds()]
    head = _head(adapter or engine.name, "chatcmpl", "chat.completion")
    batcher = request.app.state.batcher
    if body.stream:
        return _chat_events(
            batcher, head | {"object": "chat.completion.chunk"}, sequences, len(prompt_ids), body.with_usage()
        )
    await batcher.run(sequences)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": s.text},
            "finish_reason": _finish(s),
            "logprobs": _chat_logprobs(engine, s) if body.logprobs else None,
        }
        for i, s in enumerate(sequences)
    ]
    return head | {"choices": choices, "usage": _usage(sequences, len(prompt_ids))}


def _chat_events(batcher, head: dict, sequences: list[Sequence], prompt_tokens: int, with_usage: bool):
    """A chat stream: each choice's first delta carries its role."""
    started: set[int] = set()

    def chunk(i: int, delta: str) -> dict:
        d = {"content": delta} if i in started else {"role": "assistant", "content": delta}
        started.add(i)
        return head | {"choices": [{"index": i, "delta": d, "logprobs": None, "finish_reason": None}]}

    def finals():
        for i, s in enumerate(sequences):
            delta = {} if i in started else {"role": "assistant", "content": ""}
            yield head | {"choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": _finish(s)}]}

    def usage() -> dict:
        return head | {"choices": [], "usage": _usage(sequences, prompt_tokens)}

    return event_stream(batcher, sequences, chunk, finals, usage if with_usage else None)
