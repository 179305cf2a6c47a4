"""llama.cpp's server dialect, as editors use it: `/completion`, `/infill`, `/tokenize`,
`/detokenize` and `/props` (llama.cpp's tools/server/README.md).

Continue's llama.cpp provider and Tabby's `llama.cpp/completion` model kind send `/completion`;
llama.vim and llama.vscode send `/infill` on every cursor move with the fields below. Requests
carry llama.cpp's names and defaults; prompts come from the one prompt layer (prompts.py), so an
insertion is fitted around the cursor and laid out as in training. `/infill` ends an insertion
where an editor wants it (prompts.EditorStop) and after 64 tokens unless `n_predict` says
otherwise. Errors have the server's OpenAI-style body.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from dscoder import formats
from dscoder.infer import prompts
from dscoder.infer.engine import Engine, Sequence
from dscoder.infer.sampling import SamplingParams
from dscoder.infer.server import _bounded

INFILL_TOKENS = 64  # an editor's default: a line or a block, not a file
UNNAMED = "untitled"  # the path of a file sent without one
SEEDS = 2**63  # llama.cpp's seeds are unsigned 64-bit; the engine's are below this


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    n_predict: int | None = None  # -1: as many as the server gives
    temperature: float = _bounded(0.8, "temperature")  # llama.cpp's defaults, SamplingParams' bounds
    top_k: int = _bounded(40, "top_k")
    top_p: float = _bounded(0.95, "top_p")
    seed: int = Field(-1, ge=-1, le=2**64 - 1)  # -1: random; Tabby sends any 64-bit unsigned value
    stop: list[str] = Field([], max_length=4)
    stream: bool = False
    cache_prompt: bool = True
    samplers: list[str] | None = None  # accepted: the server's sampler order is fixed
    t_max_predict_ms: int | None = Field(None, gt=0)
    response_fields: list[str] | None = None

    @field_validator("n_predict")
    @classmethod
    def _n_predict(cls, value: int | None) -> int | None:
        if value is not None and (value == 0 or value < -1):
            raise ValueError("must be -1 (as many as the server gives) or a positive number of tokens")
        return value

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
    temperature: float = _bounded(0.0, "temperature")  # editors want the likeliest text
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = Field([], validation_alias=AliasChoices("input_extra", "extra_context"))
    prompt: str = ""  # typed on the cursor's line after the prefix: continued after the FIM end token
    n_indent: int = Field(0, ge=0, le=1000)
    filename: str | None = Field(None, min_length=1, max_length=1000)  # the current file's path (an extension)


class TokenizeBody(BaseModel):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeBody(BaseModel):
    tokens: list[int]


RESPONSE_FIELDS = {"content", "stop", "stop_type", "stopping_word", "model", "tokens_predicted", "tokens_evaluated",
                   "tokens_cached", "truncated", "timings", "stopped_eos", "stopped_limit", "stopped_word",
                   "generation_settings"}
TIMINGS = {"prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms",
           "predicted_per_token_ms", "predicted_per_second"}


def add_routes(app, engine: Engine, batcher: Callable[[], Any], limit: Callable, stream: Callable, error: type,
               window: int | None = None) -> None:
    """Register the routes on the FastAPI `app`: `batcher()` gives the running Batcher, `limit`
    is the server's new-token limit check, `stream` its server-sent-events writer, `error` its
    APIError, `window` the most tokens of the current file an insertion keeps."""
    from fastapi.responses import StreamingResponse

    tokenizer = engine.tokenizer

    def check_fields(fields: list[str] | None) -> None:
        for path in fields or ():
            head, _, rest = path.partition("/")
            if head not in RESPONSE_FIELDS or (rest and (head != "timings" or rest not in TIMINGS)
                                               and head != "generation_settings"):
                raise error(400, f"response_fields: unknown field {path!r}", "invalid_value", "response_fields")

    def params(body: _Sampling, new_tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=new_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=None if body.seed < 0 else body.seed % SEEDS, stop=tuple(body.stop))

    def result(s: Sequence, ids: list[int], started: float, truncated: bool, body: _Sampling) -> dict:
        stop_type = {"stop": "eos", "length": "limit", "cancelled": "limit"}.get(s.finish_reason or "", "none")
        word = s.stopped_by or ""
        if word:
            stop_type = "word"
        first = s.first_token_at or started
        done = s.finished_at or time.perf_counter()
        prompt_ms, predicted_ms = 1000 * (first - started), 1000 * (done - first)
        predicted = len(s.token_ids)
        body_out = {
            "content": s.text, "stop": True, "stop_type": stop_type, "stopping_word": word, "model": engine.name,
            "tokens_predicted": predicted, "tokens_evaluated": len(ids), "tokens_cached": s.cached_tokens,
            "truncated": truncated, "stopped_eos": stop_type == "eos", "stopped_limit": stop_type == "limit",
            "stopped_word": stop_type == "word",
            "generation_settings": {"n_predict": s.params.max_new_tokens, "temperature": body.temperature,
                                    "top_k": body.top_k, "top_p": body.top_p, "n_ctx": engine.context},
            "timings": {"prompt_n": len(ids) - s.cached_tokens, "prompt_ms": prompt_ms,
                        "prompt_per_token_ms": prompt_ms / max(len(ids) - s.cached_tokens, 1),
                        "prompt_per_second": 1000 * (len(ids) - s.cached_tokens) / max(prompt_ms, 1e-9),
                        "predicted_n": predicted, "predicted_ms": predicted_ms,
                        "predicted_per_token_ms": predicted_ms / max(predicted, 1),
                        "predicted_per_second": 1000 * predicted / max(predicted_ms, 1e-9)},
        }
        if body.response_fields:
            return {path: _get(body_out, path) for path in body.response_fields if _get(body_out, path) is not None}
        return body_out

    async def run(s: Sequence, ids: list[int], truncated: bool, body: _Sampling):
        started = time.perf_counter()
        if body.stream:
            return StreamingResponse(stream([s], lambda i, d: {"content": d, "stop": False},
                                            lambda: [result(s, ids, started, truncated, body) | {"content": ""}],
                                            None, done=False), media_type="text/event-stream")
        await batcher().run([s])
        return result(s, ids, started, truncated, body)

    @app.post("/completion")
    async def completion(body: CompletionBody):
        check_fields(body.response_fields)
        new_tokens = limit(engine, None if body.n_predict in (None, -1) else body.n_predict, "n_predict")
        if isinstance(body.prompt, list):
            bad = next((t for t in body.prompt if not 0 <= t < len(tokenizer)), None)
            if bad is not None:
                raise error(400, f"prompt: token id {bad} is not in the vocabulary (0..{len(tokenizer) - 1})",
                            "invalid_value", "prompt")
            if not body.prompt:
                raise error(400, "prompt must not be empty", "invalid_value", "prompt")
            ids = body.prompt if body.prompt[0] == tokenizer.bos_token_id else [tokenizer.bos_token_id, *body.prompt]
            if len(ids) + new_tokens > engine.context:
                raise error(400, f"this model's maximum context length is {engine.context} tokens; the prompt has "
                                 f"{len(ids)}", "context_length_exceeded", "prompt")
            prompt = prompts.Prompt(tokenizer.decode(ids), ids)
        else:
            prompt = prompts.completion(engine, body.prompt, new_tokens)
        s = Sequence(prompt.ids, params(body, new_tokens), max_ms=body.t_max_predict_ms, reuse_cache=body.cache_prompt)
        return await run(s, prompt.ids, prompt.truncated > 0, body)

    @app.post("/infill")
    async def infill(body: InfillBody):
        check_fields(body.response_fields)
        if body.n_predict is None:  # an editor's default, within the server's limit
            new_tokens = min(INFILL_TOKENS, limit(engine, None, "n_predict"))
        else:
            new_tokens = limit(engine, None if body.n_predict == -1 else body.n_predict, "n_predict")
        # the current file heads its text as in training; with context files before it and no
        # name given, a placeholder keeps it from reading as the end of the last one
        path = body.filename or (UNNAMED if body.input_extra else None)
        prompt = prompts.insertion(engine, body.input_prefix, body.input_suffix, new_tokens,
                                   [(c.filename or UNNAMED, c.text) for c in body.input_extra], path=path,
                                   typed=body.prompt, window=window)
        s = Sequence(prompt.ids, params(body, new_tokens), max_ms=body.t_max_predict_ms, reuse_cache=body.cache_prompt,
                     editor=prompts.EditorStop.at(body.input_prefix + body.prompt, body.input_suffix, body.n_indent))
        return await run(s, prompt.ids, prompt.truncated > 0, body)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeBody):
        ids = engine.encode(body.content) if body.add_special else \
            tokenizer(body.content, add_special_tokens=False)["input_ids"]
        if body.with_pieces:
            return {"tokens": [{"id": i, "piece": tokenizer.decode([i])} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeBody):
        bad = next((t for t in body.tokens if not 0 <= t < len(tokenizer)), None)
        if bad is not None:
            raise error(400, f"tokens: id {bad} is not in the vocabulary (0..{len(tokenizer) - 1})", "invalid_value",
                        "tokens")
        return {"content": tokenizer.decode(body.tokens)}

    @app.get("/props")
    async def props():
        fim = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
               (("prefix", formats.FIM_BEGIN), ("suffix", formats.FIM_HOLE), ("middle", formats.FIM_END))}
        return {"default_generation_settings": {"n_ctx": engine.context, "params": {"n_predict": -1}},
                "total_slots": engine.max_rows, "model_path": engine.name, "chat_template": formats.chat_template(),
                "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "fim_tokens": fim,
                "build_info": "dscoder"}


def _get(data: dict, path: str):
    for part in path.split("/"):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data
