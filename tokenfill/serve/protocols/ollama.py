"""Ollama: `POST /api/generate` with `suffix` (NDJSON stream by default), `GET /api/tags`,
`POST /api/show` (its template holds `{{ .Suffix }}`, which tells Continue to use FIM),
`GET /api/version`. `raw`, `keep_alive` and `options.num_ctx` are accepted and ignored."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tokenfill import __version__
from tokenfill.completion.request import max_tokens_of
from tokenfill.runtime.generate import Sampling
from tokenfill.serve.protocols.common import (
    bad,
    client_key,
    engine_options,
    field,
    read_json,
    run,
    stop_strings,
    stream,
)


def template(request: Request) -> str:
    """An Ollama template with the model's FIM tokens (the server applies them itself)."""
    worker = request.app.state.worker
    fmt = worker.engine.fim.format if worker and worker.engine.fim else None
    if fmt is None:
        return "{{ .Prompt }}"
    return (f"{{{{- if .Suffix }}}}{fmt.prefix}{{{{ .Prompt }}}}{fmt.suffix}{{{{ .Suffix }}}}"
            f"{fmt.middle}{{{{- else }}}}{{{{ .Prompt }}}}{{{{- end }}}}")


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def model_name(request: Request) -> str:
    return f"{request.app.state.settings.model.name}:latest"


async def generate(request: Request):
    body = await read_json(request)
    opts = field(body, "options", dict, {})
    try:
        sampling = Sampling(temperature=field(opts, "temperature", float, 0.8, low=0, where="options."),
                            top_p=field(opts, "top_p", float, 0.9, low=0, high=1, where="options."),
                            top_k=field(opts, "top_k", int, 40, low=0, where="options."),
                            seed=field(opts, "seed", int, None, where="options."))
    except ValueError as e:
        raise bad(f"field options.{e}") from None
    num_predict = field(opts, "num_predict", int, request.app.state.settings.default_max_tokens,
                        low=-2, where="options.")
    field(body, "raw", bool, False)
    options = dict(**engine_options(body),
                   prefix=field(body, "prompt", str, ""), suffix=field(body, "suffix", str, ""),
                   max_tokens=max_tokens_of(num_predict), sampling=sampling,
                   stop=stop_strings(opts, where="options."))
    key = client_key(request, None)
    model = body.get("model") or model_name(request)

    def final(result) -> dict:
        return {"model": model, "created_at": now(), "response": "", "done": True,
                "done_reason": {"length": "length", "aborted": "aborted"}.get(
                    result.finish_reason, "stop"),
                "total_duration": int(result.total_ms * 1e6), "load_duration": 0,
                "prompt_eval_count": result.prompt_evaluated,
                "prompt_eval_duration": int(result.prefill_ms * 1e6),
                "eval_count": result.tokens, "eval_duration": int(result.decode_ms * 1e6)}

    if field(body, "stream", bool, True):
        _, events = await stream(request, options, key)

        async def lines():
            async for kind, value in events:
                if kind == "text":
                    yield json.dumps({"model": model, "created_at": now(), "response": value,
                                      "done": False}) + "\n"
                elif kind == "done":
                    yield json.dumps(final(value)) + "\n"
                else:
                    yield json.dumps({"error": f"completion failed: {value}"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    _, result = await run(request, options, key)
    return JSONResponse({**final(result), "response": result.text})


def details() -> dict:
    return {"format": "safetensors", "family": "llama", "families": ["llama"],
            "parameter_size": "", "quantization_level": "none"}


async def tags(request: Request):
    name = model_name(request)
    return JSONResponse({"models": [{"name": name, "model": name, "modified_at": now(), "size": 0,
                                     "digest": "", "details": details()}]})


async def show(request: Request):
    await read_json(request)
    return JSONResponse({"template": template(request), "modelfile": f"FROM {model_name(request)}\n",
                         "parameters": "", "details": details(), "model_info": {},
                         "capabilities": ["completion", "insert"]})


async def version(request: Request):
    return JSONResponse({"version": __version__})


ROUTES = [
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
]
