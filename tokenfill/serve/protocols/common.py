"""What every protocol adapter shares: reading and checking a JSON body, running a job.

Adapters are thin: parse the client's fields into a `CompletionRequest`, hand a Job to the
worker, and shape the result (or the stream of pieces) the way that client expects. Errors in the
request become `HTTPError`s with a message naming the field; the server turns them into JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request

from tokenfill.completion.engine import Completion
from tokenfill.completion.fim import FimUnsupportedError
from tokenfill.completion.request import CompletionRequest, RequestError
from tokenfill.serve.worker import Job

MISSING = object()


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> HTTPError:
    return HTTPError(400, message)


class ClientGone(Exception):
    """The client went away before its request body arrived: nobody is left to answer."""


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object: 413 past the server's size limit, 415 unless sent as
    `application/json` (a web page cannot send that to another site without the browser asking
    first), 408 when the body stops arriving, 400 if it is not plain JSON (NaN and Infinity
    are not JSON, nor are arrays nested past `MAX_DEPTH`)."""
    settings = request.app.state.settings
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPError(415, "send the request body as JSON, with 'Content-Type: "
                             f"application/json' (not {kind or 'no content type'})")
    body = bytearray()
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), settings.body_timeout_s)
            except StopAsyncIteration:
                break
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise HTTPError(408, f"the request body stopped arriving for "
                             f"{settings.body_timeout_s:g} s") from None
    except ClientDisconnect:
        raise ClientGone from None
    return parse_json(bytes(body))


MAX_DEPTH = 64  # arrays and objects nested deeper than any request needs


def parse_json(body: bytes) -> dict[str, Any]:
    if _depth(body) > MAX_DEPTH:
        raise bad(f"request body is nested more than {MAX_DEPTH} deep")
    try:
        data = json.loads(body or b"null", parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad("request body must be a JSON object")
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _depth(body: bytes) -> int:
    """How deep brackets nest, outside strings (a bound check before the recursive parser)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


_KINDS = {
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    list: ("an array", lambda v: isinstance(v, list)),
    dict: ("an object", lambda v: isinstance(v, dict)),
}


def field(body: dict, name: str, kind: type, default: Any = MISSING, *, low: float | None = None,
          high: float | None = None, where: str = "") -> Any:
    """body[name] checked against `kind` and the optional bounds; null counts as absent."""
    label = f"{where}{name}"
    value = body.get(name)
    if value is None:
        if default is MISSING:
            raise bad(f"missing field '{label}'")
        return default
    description, ok = _KINDS[kind]
    if not ok(value):
        raise bad(f"field '{label}' must be {description}")
    if kind is float and not math.isfinite(value):
        raise bad(f"field '{label}' must be a finite number")
    if kind is str:
        text(value, label)
    if low is not None and value < low:
        raise bad(f"field '{label}' must be >= {low}")
    if high is not None and value > high:
        raise bad(f"field '{label}' must be <= {high}")
    return float(value) if kind is float else value


def text(value: str, label: str) -> str:
    """A string that is Unicode text: JSON's "\\ud800" (a lone surrogate) is no character."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise bad(f"field '{label}' holds a lone surrogate (not valid Unicode text)") from None
    return value


def stop_strings(body: dict, name: str = "stop", where: str = "", most: int = 16) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (isinstance(value, list) and all(isinstance(s, str) and s for s in value)
            and len(value) <= most):
        return tuple(text(s, f"{where}{name}") for s in value)
    raise bad(f"field '{where}{name}' must be a non-empty string or an array of at most {most} "
              "of them")


def engine_options(body: dict) -> dict:
    """tokenfill's own fields, which every protocol takes: `cursor_mode`, how a cursor inside a
    token is handled; `speculative`, false to decode without draft trees; `syntax`, false to
    decode raw (no syntax-aware decisions and stops); `invoked`, true when the person asked for a
    completion (so one is made in a comment too, and the confidence gate holds none back);
    `single_line`, end at the first newline; `path` and `project`, the file and the workspace
    root, for resolving imports; `min_confidence`, the gate score a completion needs to be shown
    (0 shows all). Absent: the server's defaults."""
    out = {}
    confidence = field(body, "min_confidence", float, None, low=0, high=1)
    if confidence is not None:
        out["min_confidence"] = confidence
    for name, kind in (("cursor_mode", str), ("speculative", bool), ("syntax", bool),
                       ("invoked", bool), ("single_line", bool), ("path", str),
                       ("project", str)):
        value = field(body, name, kind, None)
        if value is not None:
            out[name] = value
    return out


def completion_request(request: Request, options: dict) -> CompletionRequest:
    """The typed request from an adapter's fields, with the server's defaults for the switches
    the body leaves out; a value the engine cannot use is a 400 naming the field."""
    settings = request.app.state.settings
    try:
        return CompletionRequest(**{"cursor_mode": settings.cursor_mode,
                                    "speculative": settings.speculative,
                                    "syntax": settings.syntax,
                                    "min_confidence": settings.min_confidence, **options})
    except RequestError as e:
        raise bad(str(e)) from None


def submit(request: Request, options: dict, key: str | None) -> Job:
    typed = completion_request(request, options)
    worker = request.app.state.worker
    if worker is None:
        error = request.app.state.load_error
        raise HTTPError(503, f"the model failed to load: {error}" if error else
                        "the model is still loading; try again shortly")
    try:
        worker.engine.check(typed)
    except FimUnsupportedError as e:
        raise HTTPError(501, str(e)) from None
    job = Job(request=typed, key=key, id=request.state.request_id)
    worker.submit(job)
    return job


async def _abort_on_disconnect(request: Request, job: Job) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel("client disconnected")
            return


async def run(request: Request, options: dict, key: str | None) -> tuple[Job, Completion]:
    """Run a job to the end; abort it if the client goes away meanwhile."""
    job = submit(request, options, key)
    watcher = asyncio.create_task(_abort_on_disconnect(request, job))
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "done":
                request.state.job = job
                request.state.completion = value
                return job, value
            if kind == "error":
                raise HTTPError(500, f"completion failed: {value}")
    finally:
        watcher.cancel()


async def stream(request: Request, options: dict, key: str | None
                 ) -> tuple[Job, AsyncIterator[tuple[str, Any]]]:
    """Submit a job; iterate its ("text", piece) events up to ("done", Completion) or
    ("error", message): the status line is sent by then, so a failure becomes the stream's last
    event. If the response stream is closed early (the client went away), the job is aborted.
    """
    job = submit(request, options, key)

    async def events() -> AsyncIterator[tuple[str, Any]]:
        finished = False
        try:
            while True:
                kind, value = await job.events.get()
                finished = kind != "text"
                if kind == "done":
                    request.state.job = job
                    request.state.completion = value
                yield kind, value
                if finished:
                    return
        finally:
            if not finished:
                job.cancel("client disconnected")

    return job, events()


def client_key(request: Request, named: str | None) -> str | None:
    """Who is asking, for superseding: the protocol's own field, else the X-Tokenfill-Client header."""
    return named or request.headers.get("x-tokenfill-client")


def error_event(message: str) -> dict:
    return {"error": {"message": f"completion failed: {message}", "code": 500,
                      "type": "server_error"}}


def sse(obj: Any) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
