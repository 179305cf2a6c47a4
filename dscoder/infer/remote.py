"""A client of an OpenAI-compatible server (vLLM, llama.cpp's server, llama-cpp-python's server,
another `dscoder serve`): plain `prompt` completions, with or without `suffix`, and chat
completions, whole or streamed.

The same client serves two callers: `dscoder serve --upstream` forwards the prompts it builds,
and `dscoder eval generate --api-base` samples a benchmark. Rate limits (429), server errors
(5xx), time-outs and dropped connections are retried with backoff; what retrying cannot mend
(a 401, an unknown model, a request the server refuses) is a `RemoteError` with one line that
says what the server said.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import AsyncIterator

from dscoder.errors import UserError

log = logging.getLogger("dscoder")
MAX_STOPS = 4  # OpenAI's limit, which most servers keep: more are cut on this side


class RemoteError(UserError):
    """The server answered with an error that retrying does not mend; `status` is its HTTP
    status (0: it could not be reached), `retryable` whether trying again later might work."""

    def __init__(self, message: str, status: int = 0, retryable: bool = False):
        super().__init__(message)
        self.status, self.retryable = status, retryable


@dataclass
class Reply:
    text: str
    finish_reason: str | None  # "stop", "length", or what the server said


def _tokens(value) -> bool:
    """Whether a server's figure is a number of tokens (a positive int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _message(response) -> str:
    """The error message in a server's body (OpenAI's `error.message`, llama.cpp's, FastAPI's)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]


class Endpoint:
    """An OpenAI-compatible API at `base_url` (as an OpenAI client takes it, e.g.
    `http://127.0.0.1:8000/v1`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
    ):
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"API base URL {base_url!r}: expected http://HOST:PORT/v1 or https://...")
        self.base_url, self.model, self.retries, self.backoff = base_url.rstrip("/"), model, retries, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))

    async def close(self) -> None:
        await self.client.aclose()

    async def models(self, retry: bool = True) -> list[str]:
        """The model names the server lists (GET /models)."""
        data = await self._request("GET", "/models", None, retry)
        return [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]

    async def context_length(self) -> tuple[int, str] | None:
        """The tokens one sequence may have on the server (prompt and answer) and where the server
        says so: vLLM gives its `max_model_len` in the model list, llama.cpp's server its `n_ctx` in
        `GET /props` (`default_generation_settings.n_ctx`; older versions at the top level). None
        when it says neither (llama-cpp-python's server, for one)."""
        listing = await self._request("GET", "/models", None, retry=False)
        for entry in listing.get("data", []):
            if isinstance(entry, dict) and entry.get("id") == self.model and _tokens(entry.get("max_model_len")):
                return entry["max_model_len"], f"max_model_len at {self.base_url}/models"
        url = self.base_url.removesuffix("/v1") + "/props"  # llama.cpp's own endpoints are at the root
        try:
            props = await self._request("GET", url, None, retry=False)
        except RemoteError:  # not llama.cpp's server
            return None
        settings = props.get("default_generation_settings")
        for n_ctx in (settings.get("n_ctx") if isinstance(settings, dict) else None, props.get("n_ctx")):
            if _tokens(n_ctx):
                return n_ctx, f"n_ctx at {url}"
        return None

    async def resolve_model(self) -> str:
        """The model to ask for: the one given (checked against the server's list when it has
        one), else the server's only model."""
        names = await self.models(retry=False)  # a wrong URL is said at once, not after the retries
        if self.model is None:
            if len(names) != 1:
                raise UserError(
                    f"{self.base_url} serves {len(names)} models ({', '.join(map(str, names)) or 'none'}); "
                    "name one with --api-model"
                )
            self.model = names[0]
        elif names and self.model not in names:
            raise UserError(f"{self.base_url} has no model {self.model!r} (it serves {', '.join(map(str, names))})")
        return self.model

    async def complete(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        suffix: str | None = None,
    ) -> Reply:
        body = self._body(max_tokens, temperature, top_p, seed, stop) | {"prompt": prompt}
        if suffix is not None:  # the raw FIM output, which a dscoder server would end as an editor wants
            body |= {"suffix": suffix, "editor_rules": False}  # (servers that do not know the field ignore it)
        data = await self._request("POST", "/completions", body)
        return self._reply(data, lambda choice: choice.get("text"))

    async def chat(
        self,
        messages: list[dict],
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
    ) -> Reply:
        body = self._body(max_tokens, temperature, top_p, seed, stop) | {"messages": messages}
        data = await self._request("POST", "/chat/completions", body)
        return self._reply(data, lambda choice: (choice.get("message") or {}).get("content"))

    async def stream(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
    ) -> AsyncIterator[tuple[str, str | None]]:
        """(text delta, finish reason or None) as the server streams a completion. Only the
        connection is retried; a stream cut after its first text is a RemoteError."""
        body = self._body(max_tokens, temperature, top_p, seed, stop) | {"prompt": prompt, "stream": True}
        for attempt in range(self.retries + 1):
            started = False
            try:
                async with self.client.stream("POST", self.base_url + "/completions", json=body) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        self._raise(response)
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        try:
                            choice = (json.loads(data).get("choices") or [{}])[0]
                        except (ValueError, AttributeError):
                            raise RemoteError(f"{self.base_url}: malformed stream chunk {data[:100]!r}", 502) from None
                        started = True
                        yield choice.get("text") or "", choice.get("finish_reason")
                    return
            except RemoteError as exc:
                if not exc.retryable or started or attempt == self.retries:
                    raise
                await self._wait(attempt, exc)
            except Exception as exc:  # httpx's transport errors and time-outs
                error = self._transport(exc)
                if started or attempt == self.retries:
                    raise error from None
                await self._wait(attempt, error)

    def _body(self, max_tokens, temperature, top_p, seed, stop) -> dict:
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop[:MAX_STOPS])
        return body

    def _reply(self, data: dict, text_of) -> Reply:
        try:
            choice = data["choices"][0]
            text = text_of(choice)
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise RemoteError(
                f"{self.base_url}: the answer has no choices[0] text ({json.dumps(data)[:200]})", 502, retryable=True
            ) from None
        return Reply(text, choice.get("finish_reason"))

    async def _request(self, method: str, path: str, body: dict | None, retry: bool = True) -> dict:
        """The JSON object the server answers at `path` (under the base URL, or a whole URL)."""
        retries = self.retries if retry else 0
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        for attempt in range(retries + 1):
            try:
                response = await self.client.request(method, url, json=body)
                if response.status_code >= 400:
                    self._raise(response)
                try:
                    data = response.json()
                except ValueError:
                    raise RemoteError(
                        f"{url}: the answer is not JSON ({response.text[:100]!r})", 502, retryable=True
                    ) from None
                if not isinstance(data, dict):
                    raise RemoteError(f"{url}: the answer is not a JSON object", 502, retryable=True)
                return data
            except RemoteError as exc:
                if not exc.retryable or attempt == retries:
                    raise
                await self._wait(attempt, exc)
            except Exception as exc:
                error = self._transport(exc)
                if attempt == retries:
                    raise error from None
                await self._wait(attempt, error)
        raise AssertionError("unreachable")

    def _raise(self, response) -> None:
        status, message = response.status_code, _message(response)
        if status == 401 or status == 403:
            raise RemoteError(
                f"{self.base_url}: the server refused the API key ({status}: {message}); "
                "give the right one with --api-key",
                status,
            )
        if status == 404:
            raise RemoteError(
                f"{self.base_url}: not found ({status}: {message}); check the URL (it ends in /v1) and the model name",
                status,
            )
        raise RemoteError(f"{self.base_url}: {status} {message}", status, retryable=status == 429 or status >= 500)

    def _transport(self, exc: Exception) -> RemoteError:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return RemoteError(f"{self.base_url}: no answer within {self.timeout:g} s", 504, retryable=True)
        if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
            return RemoteError(
                f"{self.base_url}: cannot reach the server ({type(exc).__name__}: {exc})", 502, retryable=True
            )
        raise exc

    async def _wait(self, attempt: int, error: RemoteError) -> None:
        delay = self.backoff * 2**attempt * (0.5 + random.random())
        log.info("%s; trying again in %.1f s", error, delay)
        await asyncio.sleep(delay)
