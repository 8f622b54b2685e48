"""`tokenfill serve`: one HTTP server for the protocols editors speak, over one model worker.

The app is built by `create_app(settings)`. The model loads in a background thread at start-up;
until it is ready, completion routes answer 503. Every request gets an id (the `X-Request-Id`
header), and a log line with its timings: queue, prompt (tokens evaluated vs cached), generation.
Routes come from the protocol adapters' ROUTES lists (tokenfill/protocols/).

Superseding rule: a request that names its client supersedes that client's older request still
in flight, which is aborted. The client is named by llama.cpp's `id_slot`, OpenAI's and Mistral's
`user`, or the `X-Tokenfill-Client` header (any protocol). A request with none of these
supersedes nothing. A client that disconnects aborts its own request, within one decode step.

With `--workspace DIR`, the folder is indexed in the background once the model has loaded and
every request gets context from it (context/workspace.py); a request naming its file (`path`,
absolute or relative to DIR) never gets that file's chunks back. `/infill`'s timings and the
log line say what was retrieved.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tokenfill.completion.engine import Engine
from tokenfill.context.workspace import Workspaces
from tokenfill.paths import BUNDLED_MODEL, STATIC
from tokenfill.runtime.remote import CURSOR_FALLBACK as REMOTE_FALLBACKS
from tokenfill.serve import openapi
from tokenfill.serve.protocols import llamacpp, mistral, ollama, openai
from tokenfill.serve.protocols.common import ClientGone, HTTPError
from tokenfill.serve.worker import Worker

log = logging.getLogger("tokenfill.server")


@dataclass
class ServerSettings:
    model: Path = BUNDLED_MODEL
    dtype: str = "auto"
    api_key: str | None = None
    max_body_bytes: int = 2 * 2**20
    n_slots: int = 4
    cache_reuse: bool = True
    cursor_mode: str = "exact"                       # for requests that do not say (cursor_modes)
    speculative: bool = True                         # for requests that do not say (speculative/)
    syntax: bool = True                              # for requests that do not say (syntax.py)
    default_max_tokens: int = 64
    open_paths: tuple[str, ...] = ("/health", "/")   # reachable without the API key
    host: str = "127.0.0.1"                          # the address bound
    allowed_hosts: tuple[str, ...] = ()              # Host header names served besides it
    cors_origins: tuple[str, ...] = ()               # web origins whose pages may call the API
    body_timeout_s: float = 30.0                     # a body that stops arriving this long: 408
    workspace: Path | None = None                    # retrieved into every prompt (off: None)
    context_tokens: int | None = None                # its budget (None: a quarter of the window)
    min_confidence: float | None = None              # for requests that do not say (None: gate's)
    engines: tuple[str, ...] = ()                    # vLLM / llama.cpp servers running the model

    def served_hosts(self) -> frozenset[str] | None:
        """The names a request's Host header may give (port aside); None: any (the server is
        bound to every address and was given no names)."""
        if self.host in ("0.0.0.0", "::", "") and not self.allowed_hosts:
            return None
        return frozenset({*LOOPBACK_NAMES, self.host.strip("[]").lower(),
                          *(h.lower() for h in self.allowed_hosts)})


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: 'example.com:8080' -> 'example.com',
    '[::1]:8080' -> '::1'."""
    value = header.decode("latin-1").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "code": status,
                      "type": "invalid_request_error" if status < 500 else "server_error"}}


class RequestContext:
    """ASGI middleware: request id header, Host check, API key check, one log line per request.

    The Host check stops DNS rebinding: a web page whose name was made to point at 127.0.0.1
    can reach the server, but its requests carry its own name, which is not served."""

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = f"req-{uuid.uuid4().hex[:12]}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status = 0

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        headers = dict(scope["headers"])
        hosts = self.settings.served_hosts()
        if hosts is not None and host_name(headers.get(b"host", b"")) not in hosts:
            shown = headers.get(b"host", b"").decode("latin-1")
            response = JSONResponse(error_body(421, f"host {shown!r} is not served here; start "
                                               "the server with --allowed-host NAME to serve "
                                               "it"), status_code=421)
            return await response(scope, receive, send_with_id)
        key = self.settings.api_key
        if key and scope["path"] not in self.settings.open_paths:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {key}".encode()):
                response = JSONResponse(error_body(401, "missing or wrong API key: send "
                                                   "'Authorization: Bearer KEY'"), status_code=401)
                return await response(scope, receive, send_with_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log_request(request_id, scope, status, (time.perf_counter() - start) * 1000)


def log_request(request_id: str, scope, status: int, total_ms: float) -> None:
    log.info("%s %s %s %d %.1fms", request_id, scope["method"], scope["path"], status, total_ms)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ClientGone):  # nobody reads this answer; not the server's failure
        log.info("%s: the client went away before its request arrived",
                 getattr(request.state, "request_id", "?"))
        return JSONResponse(error_body(400, "the request body was cut short"), status_code=400)
    if isinstance(exc, HTTPError):
        status, message = exc.status, exc.message
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        message = {404: f"no route {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(
                       status, str(exc.detail))
    else:
        status, message = 500, "internal error"
    if status >= 500 and status != 503:
        log.error("%s failed: %s", getattr(request.state, "request_id", "?"), message)
    return JSONResponse(error_body(status, message), status_code=status)


PLAYGROUND = STATIC / "playground.html"


async def playground(request: Request) -> HTMLResponse:
    """A code editor that shows completions as grey ghost text while you type (Tab accepts)."""
    return HTMLResponse(PLAYGROUND.read_text())


async def stats(request: Request) -> JSONResponse:
    """tokenfill's own counters: jobs completed / aborted / superseded / failed, KV slot reuse;
    with remote engines, their state and how often a constrained step or a failover was needed."""
    worker = request.app.state.worker
    if worker is None:
        raise HTTPError(503, "the model is still loading; try again shortly")
    remote = worker.engine.remote
    if remote is not None:
        return JSONResponse({"worker": asdict(worker.stats), "engines": remote.describe(),
                             "constrained_steps": remote.restarts,
                             "failovers": remote.failovers})
    return JSONResponse({"worker": asdict(worker.stats), "slots": asdict(worker.slots.stats)})


async def openapi_json(request: Request) -> JSONResponse:
    """The routes described for schema-driven clients and fuzzers (openapi.py)."""
    return JSONResponse(openapi.document())


def workspaces_for(settings: ServerSettings, engine: Engine) -> Workspaces | None:
    """The server's workspace, indexing in the background (None without --workspace)."""
    if settings.workspace is None:
        return None
    budget = engine.context // 4 if settings.context_tokens is None else settings.context_tokens
    workspaces = Workspaces(budget=budget, count_tokens=lambda text: len(engine.tokenizer.encode(text)),
                            tokenizer=engine.tokenizer if settings.speculative else None,
                            on_table=engine.workspace_tables.__setitem__)
    workspaces.add(settings.workspace)
    return workspaces


def log_engines(engine: Engine) -> None:
    """What the remote engines are, and what they cannot do that a request may ask for."""
    for problem in engine.remote.check():
        log.warning("%s", problem)
    for r in engine.remote.describe():
        log.info("engine %s: %s", r["url"], r["kind"] or "not answering (retried on use)")
    for asked, given in REMOTE_FALLBACKS.items():
        log.info("on remote engines, cursor mode %s runs as %s", asked, given)
    log.info("on remote engines, speculative decoding is the engine's own (tokenfill's draft "
             "trees run in-process only)")


def create_app(settings: ServerSettings, engine: Engine | None = None) -> Starlette:
    """The ASGI app; pass `engine` to serve an already loaded one (tests), else it loads."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        def load() -> None:
            try:
                loaded = engine or Engine.open(settings.model, settings.dtype, settings.engines,
                                               require_fim=False)
                app.state.workspaces = workspaces_for(settings, loaded)
                parallel = settings.n_slots * max(1, len(settings.engines))
                app.state.worker = Worker(loaded, n_slots=settings.n_slots,
                                          reuse=settings.cache_reuse,
                                          context=app.state.workspaces, threads=parallel)
                log.info("model %s ready (%s FIM)", loaded.name,
                         loaded.fim.format.name if loaded.fim else "no")
                if loaded.remote is not None:
                    log_engines(loaded)
            except Exception as e:  # reported by /health and every completion route
                app.state.load_error = f"{type(e).__name__}: {e}"
                log.error("model failed to load: %s", app.state.load_error)

        app.state.worker, app.state.load_error, app.state.workspaces = None, None, None
        threading.Thread(target=load, name="tokenfill-load", daemon=True).start()
        yield
        if app.state.worker is not None:
            app.state.worker.close()
        if app.state.workspaces is not None:
            app.state.workspaces.close()

    routes = [*openai.ROUTES, *mistral.ROUTES, *llamacpp.ROUTES, *ollama.ROUTES,
              Route("/stats", stats, methods=["GET"]), Route("/", playground, methods=["GET"]),
              Route("/openapi.json", openapi_json, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPError: on_http_error, HTTPException: on_http_error,
                                        ClientGone: on_http_error, Exception: on_http_error})
    app.state.settings = settings
    app.state.worker, app.state.load_error = None, None
    app.add_middleware(RequestContext, settings=settings)
    if settings.cors_origins:  # off by default: no web page may read the answers
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-tokenfill-client"])
    return app
