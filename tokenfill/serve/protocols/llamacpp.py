"""llama.cpp server: `POST /infill`, `GET /health`, `GET /props`, `POST /tokenize`.

`/infill` as llama.vscode and llama.vim send it: `input_prefix` + `prompt` (the text before the
cursor on its line) is the prefix, `input_suffix` the suffix, `input_extra` chunks from other
files go before the prefix. `n_predict: 0` only fills a KV slot (warm-up); -1 means the server's
cap. `n_indent` ends the completion at a line indented less; `t_max_predict_ms` bounds
generation time; `cache_prompt: false` skips KV reuse. `id_slot` names the client (superseding).
`n_probs` and `n_cmpl` (> 1) are not supported; `n_probs` is ignored.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tokenfill import __version__
from tokenfill.completion.request import max_tokens_of
from tokenfill.runtime.generate import Sampling
from tokenfill.runtime.remote import CURSOR_FALLBACK
from tokenfill.serve.protocols.common import (
    HTTPError,
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


def options_of(body: dict, default_max_tokens: int) -> dict:
    extra = []
    for i, chunk in enumerate(field(body, "input_extra", list, [])):
        if not isinstance(chunk, dict):
            raise bad(f"field 'input_extra[{i}]' must be an object with filename and text")
        extra.append((field(chunk, "filename", str, "", where=f"input_extra[{i}]."),
                      field(chunk, "text", str, where=f"input_extra[{i}].")))
    n_predict = field(body, "n_predict", int, default_max_tokens, low=-1)
    if field(body, "n_cmpl", int, 1, low=1) != 1:
        raise bad("field 'n_cmpl' must be 1 (several completions per request are not supported)")
    try:
        sampling = Sampling(temperature=field(body, "temperature", float, 0.8, low=0),
                            top_p=field(body, "top_p", float, 0.95, low=0, high=1),
                            top_k=field(body, "top_k", int, 40, low=0),
                            min_p=field(body, "min_p", float, 0.05, low=0, high=1),
                            seed=_seed(field(body, "seed", int, -1)))
    except ValueError as e:
        raise bad(f"field {e}") from None
    budget = field(body, "t_max_predict_ms", float, 0, low=0)
    return dict(**engine_options(body),
                prefix=field(body, "input_prefix", str, "") + field(body, "prompt", str, ""),
                suffix=field(body, "input_suffix", str, ""), extra=tuple(extra),
                max_tokens=max_tokens_of(n_predict), sampling=sampling,
                stop=stop_strings(body), n_indent=field(body, "n_indent", int, 0, low=0),
                time_budget_ms=budget or None, reuse=field(body, "cache_prompt", bool, True))


def _seed(seed: int) -> int | None:
    return None if seed < 0 else seed  # llama.cpp: -1 means random


def result_body(request: Request, result) -> dict:
    reason = result.finish_reason
    stop_type = "word" if result.stop_string else {"length": "limit", "time": "limit",
                                                   "aborted": "aborted"}.get(reason, "eos")
    gen_s = result.decode_ms / 1000
    return {
        "content": result.text, "tokens": [], "stop": True, "stop_type": stop_type,
        "stopping_word": result.stop_string, "model": request.app.state.settings.model.name,
        "timings": {"prompt_n": result.prompt_evaluated, "prompt_ms": result.prefill_ms,
                    "predicted_n": result.tokens, "predicted_ms": result.decode_ms,
                    "predicted_per_second": result.tokens / gen_s if gen_s > 0 else 0.0,
                    "draft_n": result.drafted, "draft_n_accepted": result.accepted,
                    # tokenfill's own: decoding passes, draft tokens accepted per pass
                    "forwards": result.forwards,
                    "draft_mean_accepted": round(result.mean_accepted, 3),
                    # tokenfill's own: the confidence gate's score, and whether it cut the text
                    "confidence": result.confidence, "confidence_cut": result.cut,
                    # tokenfill's own: the workspace context retrieved into the prompt
                    **context_timings(request)},
        "tokens_cached": result.prompt_tokens - result.prompt_evaluated,
        "tokens_evaluated": result.prompt_evaluated, "truncated": False,
        "declined": result.skipped,  # tokenfill: why none was made or shown ("": one was)
        "confidence": result.confidence,  # tokenfill: the gate's score (null without a gate)
    }


def context_timings(request: Request) -> dict:
    """What the server's workspace added to this request's prompt (none without --workspace)."""
    job = getattr(request.state, "job", None)
    got = job.retrieved if job is not None else None
    if got is None:
        return {}
    return {"context_n": got.chunks, "context_tokens": got.tokens,
            "context_ms": round(got.ms, 3)}


async def infill(request: Request):
    body = await read_json(request)
    options = options_of(body, request.app.state.settings.default_max_tokens)
    worker = request.app.state.worker
    if worker is not None and worker.engine.fim is None:
        raise HTTPError(501, "this model has no fill-in-the-middle tokens: /infill is not supported")
    key = client_key(request, None if body.get("id_slot") is None else str(body["id_slot"]))
    if field(body, "stream", bool, False):
        _, events = await stream(request, options, key)

        async def chunks():
            async for kind, value in events:
                if kind == "text":
                    yield sse({"content": value, "stop": False})
                elif kind == "done":
                    yield sse({**result_body(request, value), "content": ""})
                else:
                    yield sse(error_event(value))

        return StreamingResponse(chunks(), media_type="text/event-stream")
    _, result = await run(request, options, key)
    return JSONResponse(result_body(request, result))


async def health(request: Request):
    if request.app.state.worker is None:
        error = request.app.state.load_error
        return JSONResponse({"status": "error" if error else "loading",
                             **({"error": error} if error else {})}, status_code=503)
    return JSONResponse({"status": "ok"})


async def props(request: Request):
    settings = request.app.state.settings
    worker = request.app.state.worker
    return JSONResponse({
        "default_generation_settings": {"n_predict": settings.default_max_tokens,
                                        "temperature": 0.8, "top_k": 40, "top_p": 0.95,
                                        "min_p": 0.05},
        "total_slots": settings.n_slots, "model_path": settings.model.name,
        "n_ctx": worker.engine.context if worker else None,
        "fim": worker.engine.fim.format.name if worker and worker.engine.fim else None,
        "build_info": f"tokenfill {__version__}",
        **(remote_props(worker.engine) if worker and worker.engine.remote else {}),
    })


def remote_props(engine) -> dict:
    """Where the model runs when other engines run it, and what runs differently there."""
    return {"engines": engine.remote.describe(),
            "cursor_fallback": dict(CURSOR_FALLBACK),
            "speculative": "the engines' own"}


async def tokenize(request: Request):
    body = await read_json(request)
    content = field(body, "content", str)
    worker = request.app.state.worker
    if worker is None:
        raise HTTPError(503, "the model is still loading; try again shortly")
    # a 2 MB body takes a while to encode: off the event loop, which serves everyone else
    return JSONResponse({"tokens": await asyncio.to_thread(worker.engine.tokenizer.encode,
                                                           content)})


ROUTES = [
    Route("/infill", infill, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/props", props, methods=["GET"]),
    Route("/tokenize", tokenize, methods=["POST"]),
]
