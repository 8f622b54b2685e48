"""Mistral FIM: `POST /v1/fim/completions`, answered chat-shaped (`message.content`, or
`delta.content` chunks when streaming). `min_tokens` is accepted and not enforced."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tokenfill.runtime.generate import Sampling
from tokenfill.serve.protocols.common import (
    bad,
    client_key,
    engine_options,
    error_event,
    field,
    read_json,
    run,
    sse,
    stop_strings,
    stream,
)
from tokenfill.serve.protocols.openai import finish


async def fim_completions(request: Request):
    body = await read_json(request)
    try:
        sampling = Sampling(temperature=field(body, "temperature", float, 0.7, low=0, high=1.5),
                            top_p=field(body, "top_p", float, 1.0, low=0, high=1),
                            seed=field(body, "random_seed", int, None, low=0))
    except ValueError as e:
        raise bad(f"field {e}") from None
    field(body, "min_tokens", int, 0, low=0)
    options = dict(**engine_options(body),
                   prefix=field(body, "prompt", str), suffix=field(body, "suffix", str, ""),
                   max_tokens=field(body, "max_tokens", int,
                                    request.app.state.settings.default_max_tokens, low=0),
                   sampling=sampling, stop=stop_strings(body))
    key = client_key(request, field(body, "user", str, None))
    head = {"id": f"fim-{request.state.request_id}", "created": int(time.time()),
            "model": body.get("model") or request.app.state.settings.model.name}
    if field(body, "stream", bool, False):
        _, events = await stream(request, options, key)

        async def chunks():
            async for kind, value in events:
                if kind == "error":
                    yield sse(error_event(value))
                    break
                delta, reason = (value, None) if kind == "text" else ("", finish(value.finish_reason))
                yield sse({**head, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {"content": delta}, "finish_reason": reason}]})
            yield sse("[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream")
    _, result = await run(request, options, key)
    return JSONResponse({**head, "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": result.text},
         "finish_reason": finish(result.finish_reason)}],
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.tokens,
                  "total_tokens": result.prompt_tokens + result.tokens}})


ROUTES = [Route("/v1/fim/completions", fim_completions, methods=["POST"])]
