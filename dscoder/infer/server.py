"""`dscoder serve`: the HTTP server (FastAPI + uvicorn) for one engine, a model loaded here or
another server that generates (`--upstream`, upstream.py).

The application is assembled from parts, each in its own module:

- openai_api.py: OpenAI's dialect (`/v1/models`, `/v1/completions`, `/v1/chat/completions`);
- llama_api.py: llama.cpp's (`/completion`, `/infill`, `/tokenize`, `/detokenize`, `/props`,
  `/health`), which editor plugins use;
- http_common.py: the request layer both stand on: OpenAI's error body (`{"error": {"message",
  "type", "param", "code"}}`, a 4xx status, and the server keeps serving), the API key and body
  size checks, server-sent events, and `new_tokens`, how long an answer may be.

`create_app` builds the app without touching argv, for tests; `serve` runs it on a bound socket.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from dscoder.config import AT_LEAST_ONE
from dscoder.errors import UserError
from dscoder.infer.batching import make_batcher

log = logging.getLogger("dscoder")
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
    max_prompt_ms: Annotated[int, AT_LEAST_ONE] | None = None
    """For an insertion that gives no `t_max_prompt_ms`: the time its prompt may take to compute
    (the suffix's far lines and uncached context files are left out to meet it); None: no limit."""


@asynccontextmanager
async def _lifespan(app):
    """The engine's batcher runs while the app does (http_common says what routes find on app.state)."""
    app.state.batcher = make_batcher(app.state.engine, app.state.max_batch)
    yield
    app.state.batcher.close()


def create_app(engine, api_key: str | None = None, max_batch: int = 8, limits: ServeLimits = ServeLimits()):
    """The FastAPI application serving `engine` (an Engine or an UpstreamEngine), holding every
    request to `limits`."""
    from fastapi import FastAPI

    from dscoder.infer import http_common, llama_api, openai_api

    app = FastAPI(title="dscoder", lifespan=_lifespan, exception_handlers=http_common.ERROR_HANDLERS)
    app.state.engine, app.state.max_batch, app.state.batcher = engine, max_batch, None
    app.state.api_key, app.state.limits, app.state.warned = api_key, limits, set()
    app.state.next_lines = {}  # each editor's next line as last guessed (llama_api.infill)
    app.middleware("http")(http_common.guard)
    app.include_router(openai_api.router)
    app.include_router(llama_api.router)
    return app


def require_serve_stack():
    """The uvicorn module, once FastAPI and uvicorn both import; a one-line UserError naming what
    is missing otherwise (either package, or one of their own dependencies)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise UserError(
            f"serving needs the 'serve' extra (FastAPI, uvicorn), which does not import here "
            f"({exc}): pip install 'dscoder[serve]'"
        ) from None
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
            raise UserError(
                f"--port {port}: {host}:{port} is already in use (another server?); choose another port"
            ) from None
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


def serve(
    engine, listener: socket.socket, api_key: str | None = None, max_batch: int = 8, limits: ServeLimits = ServeLimits()
) -> None:
    """Serve on the bound `listener` until interrupted."""
    uvicorn = require_serve_stack()
    host, port = listener.getsockname()[:2]
    app = create_app(engine, api_key, max_batch, limits)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM or Ctrl-C: stop generating now, answer what is in flight
            if app.state.batcher is not None:
                app.state.batcher.stop()
            if sig == signal.SIGTERM:  # a requested stop: exit 0 (uvicorn would raise the signal again once stopped)
                self.should_exit = True
            else:
                super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS))
    log.info("serving %s on http://%s:%d (OpenAI API under /v1)", engine.name, host, port)
    server.run(sockets=[listener])
