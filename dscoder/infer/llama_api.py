"""llama.cpp's server dialect, as editors use it: `/completion`, `/infill`, `/tokenize`,
`/detokenize`, `/props` and `/health` (llama.cpp's tools/server/README.md).

Continue's llama.cpp provider and Tabby's `llama.cpp/completion` model kind send `/completion`;
llama.vim and llama.vscode send `/infill` on every cursor move with the fields below. Requests
carry llama.cpp's names and defaults; prompts come from the one prompt layer (prompts.py), so an
insertion is fitted around the cursor and laid out as in training. `/infill` ends an insertion
where an editor wants it (prompts.EditorStop) unless `"editor_rules": false` (a dscoder extension)
asks for the raw FIM output (http_common.insertion_stop decides, as for the OpenAI dialect's
`suffix`), and after 64 tokens unless `n_predict` says otherwise (http_common.new_tokens decides,
as for the OpenAI dialect). Errors have the server's OpenAI-style body. As llama.cpp's server
does, a request body is read as JSON whatever its Content-Type says (`curl -d` sends
`application/x-www-form-urlencoded`); the OpenAI routes keep FastAPI's check that JSON is
labelled as JSON. With `serve --lora`, a body's `model` (not a llama.cpp field) picks the
adapter, as on the OpenAI routes (http_common.adapter_for); without, it is ignored.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from dscoder import formats
from dscoder.infer import prompts
from dscoder.infer.engine import Sequence
from dscoder.infer.http_common import (
    APIError,
    Body,
    adapter_for,
    bounded,
    check_prompt_ms,
    event_stream,
    insertion_stop,
    new_tokens,
    time_limit,
)
from dscoder.infer.sampling import SamplingParams

INFILL_TOKENS = 64  # an editor's default: a line or a block, not a file
UNNAMED = "untitled"  # the path of a file sent without one
SEEDS = 2**63  # llama.cpp's seeds are unsigned 64-bit; the engine's are below this


class AnyContentType(APIRoute):
    """A route that reads its body as JSON whatever the request's Content-Type says."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def as_json(request: Request):
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
            return await handler(request)

        return as_json


router = APIRouter(route_class=AnyContentType)


class _Sampling(Body):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None  # with serve --lora: the adapter's name (or the base's); ignored without
    n_predict: int | None = None  # -1: as many as the server gives
    temperature: float = bounded(0.8, "temperature")  # llama.cpp's defaults, SamplingParams' bounds
    top_k: int = bounded(40, "top_k")
    top_p: float = bounded(0.95, "top_p")
    seed: int = Field(-1, ge=-1, le=2**64 - 1)  # -1: random; Tabby sends any 64-bit unsigned value
    stop: list[str] = Field([], max_length=4)
    stream: bool = False
    cache_prompt: bool = True
    samplers: list[str] | None = None  # accepted: the server's sampler order is fixed
    t_max_predict_ms: int | None = Field(None, gt=0)
    t_max_prompt_ms: int | None = None  # /infill: the prompt is fitted to be computed in this time
    id_slot: int = Field(-1, ge=-1)  # an editor's slot: its next request cancels this one
    response_fields: list[str] | None = None

    @field_validator("n_predict")
    @classmethod
    def _n_predict(cls, value: int | None) -> int | None:
        if value is not None and value < -1:
            raise ValueError(
                "must be -1 (as many as the server gives), 0 (compute the prompt only) or a positive number of tokens"
            )
        return value

    _t_max_prompt_ms = field_validator("t_max_prompt_ms")(check_prompt_ms)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


class CompletionBody(_Sampling):
    prompt: str | list[int]


class ExtraChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")
    filename: str = ""
    text: str


class InfillBody(_Sampling):
    temperature: float = bounded(0.0, "temperature")  # editors want the likeliest text
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = Field([], validation_alias=AliasChoices("input_extra", "extra_context"))
    prompt: str = ""  # typed on the cursor's line after the prefix: continued after the FIM end token
    n_indent: int = Field(0, ge=0, le=1000)
    filename: str | None = Field(None, min_length=1, max_length=1000)  # the current file's path (an extension)
    editor_rules: bool = True  # an extension: false gives the raw FIM output (until EOS or n_predict)


class TokenizeBody(Body):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeBody(Body):
    tokens: list[int]


RESPONSE_FIELDS = {
    "content",
    "stop",
    "stop_type",
    "stopping_word",
    "model",
    "tokens_predicted",
    "tokens_evaluated",
    "tokens_cached",
    "truncated",
    "timings",
    "stopped_eos",
    "stopped_limit",
    "stopped_word",
    "generation_settings",
}
TIMINGS = {
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
    "cache_n",
    "left_out_n",
    "left_out_for_time_n",
}


def _check_fields(fields: list[str] | None) -> None:
    for path in fields or ():  # "" picks nothing (llama.vim's ring updates send [""], wanting no answer)
        if not path:
            continue
        head, _, rest = path.partition("/")
        if head not in RESPONSE_FIELDS or (
            rest and (head != "timings" or rest not in TIMINGS) and head != "generation_settings"
        ):
            raise APIError(400, f"response_fields: unknown field {path!r}", "invalid_value", "response_fields")


def _asked(n_predict: int | None) -> int | None:
    """The request's own new-token limit: None where it gives none (absent, or -1)."""
    return None if n_predict in (None, -1) else n_predict


def _params(body: _Sampling, new_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=None if body.seed < 0 else body.seed % SEEDS,
        stop=tuple(body.stop),
    )


def _in_vocabulary(tokenizer, ids: list[int], param: str) -> None:
    bad = next((t for t in ids if not 0 <= t < len(tokenizer)), None)
    if bad is not None:
        raise APIError(
            400, f"{param}: token id {bad} is not in the vocabulary (0..{len(tokenizer) - 1})", "invalid_value", param
        )


def _result(engine, s: Sequence, prompt: prompts.Prompt, started: float, body: _Sampling) -> dict:
    """llama.cpp's answer: the text, why it stopped, the settings used and the timings (with
    dscoder's `left_out_n`: prompt tokens left out in fitting, `left_out_for_time_n` of them to
    meet t_max_prompt_ms)."""
    stop_type = {"stop": "eos", "length": "limit", "cancelled": "limit"}.get(s.finish_reason or "", "none")
    word = s.stopped_by or ""
    if word:
        stop_type = "word"
    first = s.first_token_at or started
    done = s.finished_at or time.perf_counter()
    prompt_ms, predicted_ms = 1000 * (first - started), 1000 * (done - first)
    ids = prompt.ids
    predicted, evaluated = len(s.token_ids), len(ids) - s.cached_tokens
    body_out = {
        "content": s.text,
        "stop": True,
        "stop_type": stop_type,
        "stopping_word": word,
        "model": s.adapter or engine.name,
        "tokens_predicted": predicted,
        "tokens_evaluated": len(ids),
        "tokens_cached": s.cached_tokens,
        "truncated": prompt.truncated > 0,
        "stopped_eos": stop_type == "eos",
        "stopped_limit": stop_type == "limit",
        "stopped_word": stop_type == "word",
        "generation_settings": {
            "n_predict": s.params.max_new_tokens if body.n_predict != 0 else 0,
            "temperature": body.temperature,
            "top_k": body.top_k,
            "top_p": body.top_p,
            "n_ctx": engine.context,
        },
        "timings": {
            "prompt_n": evaluated,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(evaluated, 1),
            "prompt_per_second": 1000 * evaluated / max(prompt_ms, 1e-9),
            "predicted_n": predicted,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(predicted, 1),
            "predicted_per_second": 1000 * predicted / max(predicted_ms, 1e-9),
            "cache_n": s.cached_tokens,
            "left_out_n": prompt.truncated,
            "left_out_for_time_n": prompt.late,
        },
    }
    if body.response_fields:
        return {
            path: _get(body_out, path) for path in body.response_fields if path and _get(body_out, path) is not None
        }
    return body_out


async def _answer(request: Request, s: Sequence, prompt: prompts.Prompt, body: _Sampling, slot=None):
    """Generate `s`: the whole answer, or its text streamed and the answer as the last event."""
    engine, batcher = request.app.state.engine, request.app.state.batcher
    started = time.perf_counter()
    if body.stream:
        return event_stream(
            batcher,
            [s],
            lambda i, d: {"content": d, "stop": False},
            lambda: [_result(engine, s, prompt, started, body) | {"content": ""}],
            done=False,
            slot=slot,
        )
    await batcher.run([s], slot)
    return _result(engine, s, prompt, started, body)


def _ahead(request: Request, key, prompt: prompts.Prompt, body: _Sampling, adapter: str | None) -> dict:
    """`n_predict` 0: the prompt is computed (under `adapter`) while the server is idle
    (llama.vim sends the chunks of its ring buffer this way); the answer comes at once, with no
    text. It is asked ahead under `key` (who sent it) apart from that editor's guesses: a ring
    update must not replace the next line's prompt."""
    request.app.state.batcher.ahead((*key, "n_predict 0"), [prompt.ids], adapter)
    s = Sequence(prompt.ids, SamplingParams(max_new_tokens=1), finish_reason="length", adapter=adapter)
    return _result(request.app.state.engine, s, prompt, time.perf_counter(), body.model_copy(update={"n_predict": 0}))


def _slot(request: Request, body: _Sampling, *more) -> tuple | None:
    """Who a request comes from, for cancelling its older requests and replacing what was asked
    ahead for it: its `id_slot`, else its address and `more` (None: no one in particular)."""
    engine = request.app.state.engine
    if body.id_slot >= max(engine.max_rows, 1):
        raise APIError(
            400,
            f"id_slot: {body.id_slot} is not a slot of this server (-1, or 0..{engine.max_rows - 1})",
            "invalid_value",
            "id_slot",
        )
    if body.id_slot >= 0:
        return ("slot", body.id_slot)
    return ("client", request.client.host if request.client else None, *more) if more else None


def _token_prompt(engine, ids: list[int], n_predict: int | None, most: int) -> tuple[prompts.Prompt, int]:
    """A prompt given as token ids (BOS added when missing) and its new tokens: it is not cut."""
    _in_vocabulary(engine.tokenizer, ids, "prompt")
    if not ids:
        raise APIError(400, "prompt must not be empty", "invalid_value", "prompt")
    bos = engine.tokenizer.bos_token_id
    ids = ids if ids[0] == bos else [bos, *ids]
    limit = new_tokens(engine, _asked(n_predict), most, "n_predict", prompt_tokens=len(ids))
    return prompts.Prompt(engine.tokenizer.decode(ids), ids), limit


@router.post("/completion")
async def completion(body: CompletionBody, request: Request):
    _check_fields(body.response_fields)
    engine, most = request.app.state.engine, request.app.state.limits.max_tokens
    adapter = adapter_for(engine, body.model, checked=False)
    slot = _slot(request, body)
    if body.n_predict == 0:
        prompt = (
            _token_prompt(engine, body.prompt, None, most)[0]
            if isinstance(body.prompt, list)
            else prompts.completion(engine, body.prompt, 1)
        )
        return _ahead(
            request, slot or ("client", request.client and request.client.host, adapter), prompt, body, adapter
        )
    if isinstance(body.prompt, list):
        prompt, limit = _token_prompt(engine, body.prompt, body.n_predict, most)
    else:  # cut from the left to what the answer leaves
        limit = new_tokens(engine, _asked(body.n_predict), most, "n_predict")
        prompt = prompts.completion(engine, body.prompt, limit)
    s = Sequence(
        prompt.ids, _params(body, limit), max_ms=body.t_max_predict_ms, reuse_cache=body.cache_prompt, adapter=adapter
    )
    return await _answer(request, s, prompt, body, slot)


@router.post("/infill")
async def infill(body: InfillBody, request: Request):
    _check_fields(body.response_fields)
    engine, limits, batcher = request.app.state.engine, request.app.state.limits, request.app.state.batcher
    adapter = adapter_for(engine, body.model, checked=False)
    editor = _slot(request, body, body.filename, adapter)  # this editor: what is asked ahead for it
    slot = editor if body.id_slot >= 0 else (*editor, body.input_prefix)  # a keystroke on the same line
    limit = (
        1
        if body.n_predict == 0
        else new_tokens(
            engine,
            _asked(body.n_predict),
            limits.max_tokens,
            "n_predict",
            default=INFILL_TOKENS if body.n_predict is None else None,
        )
    )
    extra = [(c.filename or UNNAMED, c.text) for c in body.input_extra]

    def fit(
        prefix: str,
        typed: str,
        time_limit: prompts.TimeLimit | None = None,
        chunks=extra,
        suffix: str = body.input_suffix,
        filename: str | None = body.filename,
        limit: int = limit,
    ) -> prompts.Prompt:
        # the current file heads its text as in training; with context files before it and no
        # name given, a placeholder keeps it from reading as the end of the last one
        return prompts.insertion(
            engine,
            prefix,
            suffix,
            limit,
            chunks,
            path=filename or (UNNAMED if chunks else None),
            typed=typed,
            window=limits.infill_window,
            time_limit=time_limit,
        )

    next_lines = request.app.state.next_lines  # (prefix, suffix, filename, new tokens) per editor
    if body.n_predict == 0:  # work ahead: no time limit
        answer = _ahead(request, editor, fit(body.input_prefix, body.prompt), body, adapter)
        if editor in next_lines and body.input_extra:  # new context (llama.vim's ring): the next
            prefix, suffix, filename, asked = next_lines[editor]  # line's prompt again, with it
            batcher.ahead(editor, [fit(prefix, "", suffix=suffix, filename=filename, limit=asked).ids], adapter)
        return answer
    prompt = fit(body.input_prefix, body.prompt, time_limit(request, body.t_max_prompt_ms, adapter))
    s = Sequence(
        prompt.ids,
        _params(body, limit),
        max_ms=body.t_max_predict_ms,
        reuse_cache=body.cache_prompt,
        editor=insertion_stop(body.input_prefix + body.prompt, body.input_suffix, body.editor_rules, body.n_indent),
        adapter=adapter,
    )
    if body.cache_prompt:  # the next keystrokes' prompts, computed while the server is idle: this one
        # whole where it was shortened to be on time, and the next line's, as if Enter were pressed
        # now (the text after the cursor, the suffix, stays the same)
        guesses = [fit(body.input_prefix, body.prompt).ids] if prompt.late else []
        next_lines[editor] = (body.input_prefix + body.prompt + "\n", body.input_suffix, body.filename, limit)
        batcher.ahead(editor, [*guesses, fit(next_lines[editor][0], "").ids], adapter)
    return await _answer(request, s, prompt, body, slot)


@router.post("/tokenize")
async def tokenize(body: TokenizeBody, request: Request):
    engine = request.app.state.engine
    ids = (
        engine.encode(body.content)
        if body.add_special
        else engine.tokenizer(body.content, add_special_tokens=False)["input_ids"]
    )
    if body.with_pieces:
        return {"tokens": [{"id": i, "piece": engine.tokenizer.decode([i])} for i in ids]}
    return {"tokens": ids}


@router.post("/detokenize")
async def detokenize(body: DetokenizeBody, request: Request):
    tokenizer = request.app.state.engine.tokenizer
    _in_vocabulary(tokenizer, body.tokens, "tokens")
    return {"content": tokenizer.decode(body.tokens)}


@router.get("/props")
async def props(request: Request):
    engine = request.app.state.engine
    tokenizer = engine.tokenizer
    fim = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (("prefix", formats.FIM_BEGIN), ("suffix", formats.FIM_HOLE), ("middle", formats.FIM_END))
    }
    return {
        "default_generation_settings": {"n_ctx": engine.context, "params": {"n_predict": -1}},
        "total_slots": engine.max_rows,
        "model_path": engine.name,
        "chat_template": formats.chat_template(),
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "fim_tokens": fim,
        "build_info": "dscoder",
    }


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "model": request.app.state.engine.name}


def _get(data: dict, path: str):
    for part in path.split("/"):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data
