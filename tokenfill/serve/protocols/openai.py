"""OpenAI legacy completions: `POST /v1/completions` (with `suffix`), `GET /v1/models`.

The server applies the model's FIM template to `prompt` + `suffix`. `n` > 1 runs n completions
one after another (seeds seed, seed+1, ...). With `logprobs` (any number: no alternatives are
given) each choice carries the log-probabilities of the tokens it was decoded as (those after a
partial word the cursor mode spelled byte by byte). tokenfill adds `confidence`, the gate's
score, to each choice.
"""

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
    text,
)


def options_of(body: dict, default_max_tokens: int) -> tuple[dict, int, bool, str | None, bool]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise bad("field 'prompt' must be a string (arrays of prompts are not supported)")
    if prompt is None:
        raise bad("missing field 'prompt'")
    if not isinstance(prompt, str):
        raise bad("field 'prompt' must be a string")
    text(prompt, "prompt")
    seed = field(body, "seed", int, None)
    try:
        sampling = Sampling(temperature=field(body, "temperature", float, 1.0, low=0, high=2),
                            top_p=field(body, "top_p", float, 1.0, low=0, high=1), seed=seed)
    except ValueError as e:
        raise bad(f"field {e}") from None
    options = dict(**engine_options(body),
                   prefix=prompt, suffix=field(body, "suffix", str, ""),
                   max_tokens=field(body, "max_tokens", int, default_max_tokens, low=0),
                   sampling=sampling, stop=stop_strings(body, most=4))
    n = field(body, "n", int, 1, low=1, high=8)
    echo = field(body, "echo", bool, False)
    logprobs = field(body, "logprobs", int, None, low=0, high=5) is not None
    user = field(body, "user", str, None)
    return options, n, echo, user, logprobs


def _with_seed(options: dict, i: int) -> dict:
    s = options["sampling"]
    seed = None if s.seed is None else s.seed + i
    return {**options, "sampling": Sampling(s.temperature, s.top_p, s.top_k, s.min_p, seed)}


async def completions(request: Request):
    body = await read_json(request)
    options, n, echo, user, logprobs = options_of(body,
                                                  request.app.state.settings.default_max_tokens)
    key = client_key(request, user)
    model = body.get("model") or request.app.state.settings.model.name
    head = {"id": f"cmpl-{request.state.request_id}", "object": "text_completion",
            "created": int(time.time()), "model": model}
    if field(body, "stream", bool, False):
        if n != 1:
            raise bad("field 'n' must be 1 when streaming")
        _, events = await stream(request, options, key)

        async def chunks():
            if echo:
                yield sse({**head, "choices": [choice(options["prefix"], None)]})
            async for kind, value in events:
                if kind == "text":
                    yield sse({**head, "choices": [choice(value, None)]})
                elif kind == "done":
                    yield sse({**head, "choices": [choice("", finish(value.finish_reason))]})
                else:
                    yield sse(error_event(value))
            yield sse("[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream")
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for i in range(n):
        _, result = await run(request, _with_seed(options, i), key)
        text = options["prefix"] + result.text if echo else result.text
        choices.append({**choice(text, finish(result.finish_reason)), "index": i,
                        "confidence": result.confidence,
                        "logprobs": token_logprobs(request, result) if logprobs else None})
        prompt_tokens, completion_tokens = result.prompt_tokens, completion_tokens + result.tokens
    return JSONResponse({**head, "choices": choices,
                         "usage": {"prompt_tokens": prompt_tokens,
                                   "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}})


def choice(text: str, finish_reason: str | None) -> dict:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def token_logprobs(request: Request, result) -> dict | None:
    """OpenAI's `logprobs` object for the completion's decoded tokens."""
    stats = result.stats
    if stats is None:
        return None
    token_bytes = request.app.state.worker.engine.tokenizer.token_bytes
    tokens = [token_bytes[t].decode("utf-8", errors="replace") for t in stats.tokens]
    offsets, at = [], 0
    for piece in tokens:
        offsets.append(at)
        at += len(piece)
    return {"tokens": tokens, "token_logprobs": [round(x, 4) for x in stats.logprobs],
            "top_logprobs": None, "text_offset": offsets}


def finish(reason: str) -> str:
    """OpenAI's finish_reason: a completion cut short by a newer request or a client that went
    away is "cancelled", never a plain "stop" that an empty text would pass for."""
    return {"length": "length", "aborted": "cancelled"}.get(reason, "stop")


async def models(request: Request):
    name = request.app.state.settings.model.name
    return JSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "tokenfill"}]})


ROUTES = [
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
]
