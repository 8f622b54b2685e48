"""An OpenAPI description of the HTTP routes (`GET /openapi.json`), so that schema-driven clients
and fuzzers can be pointed at the server. The fields are the ones the protocol adapters read;
each adapter checks them again when a request comes (this is a description, not the checks)."""

from __future__ import annotations

from tokenfill import __version__

STRING, INTEGER, NUMBER, BOOLEAN = ({"type": t} for t in ("string", "integer", "number", "boolean"))
STOP = {"oneOf": [STRING, {"type": "array", "items": STRING, "maxItems": 16}]}
TOKENFILL = {  # tokenfill's own fields, on every completion route
    "cursor_mode": {"type": "string", "enum": ["exact", "heal", "none"]},
    "speculative": BOOLEAN, "syntax": BOOLEAN, "invoked": BOOLEAN, "single_line": BOOLEAN,
    "path": STRING, "project": STRING,
    "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
}
SEED = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
TEMPERATURE = {"type": "number", "minimum": 0, "maximum": 100}
TOP_P = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}

ROUTES: dict[str, tuple[str, dict]] = {  # POST route -> (summary, fields)
    "/v1/completions": ("OpenAI completions, with `suffix` for fill-in-the-middle", {
        "prompt": STRING, "suffix": STRING, "max_tokens": {"type": "integer", "minimum": 0},
        "temperature": {**TEMPERATURE, "maximum": 2}, "top_p": TOP_P,
        "n": {"type": "integer", "minimum": 1, "maximum": 8}, "stream": BOOLEAN, "stop": STOP,
        "seed": SEED, "echo": BOOLEAN, "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
        "user": STRING, "model": STRING,
        **TOKENFILL}),
    "/infill": ("llama.cpp infill", {
        "input_prefix": STRING, "input_suffix": STRING, "prompt": STRING,
        "input_extra": {"type": "array", "items": {"type": "object", "properties": {
            "filename": STRING, "text": STRING}}},
        "n_predict": {"type": "integer", "minimum": -1}, "temperature": TEMPERATURE,
        "top_p": TOP_P, "top_k": {"type": "integer", "minimum": 0},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": -1, "maximum": 2**63 - 1}, "stream": BOOLEAN,
        "stop": STOP, "n_indent": {"type": "integer", "minimum": 0},
        "t_max_predict_ms": {"type": "number", "minimum": 0}, "cache_prompt": BOOLEAN,
        "id_slot": INTEGER, "n_cmpl": {"type": "integer", "minimum": 1, "maximum": 1},
        "n_probs": INTEGER, **TOKENFILL}),
    "/api/generate": ("Ollama generate, with `suffix`", {
        "model": STRING, "prompt": STRING, "suffix": STRING, "stream": BOOLEAN, "raw": BOOLEAN,
        "keep_alive": STRING,
        "options": {"type": "object", "properties": {
            "num_predict": {"type": "integer", "minimum": -2}, "temperature": TEMPERATURE,
            "top_p": TOP_P, "top_k": {"type": "integer", "minimum": 0}, "seed": SEED,
            "stop": STOP, "num_ctx": INTEGER}},
        **TOKENFILL}),
    "/v1/fim/completions": ("Mistral FIM completions", {
        "model": STRING, "prompt": STRING, "suffix": STRING,
        "max_tokens": {"type": "integer", "minimum": 0},
        "min_tokens": {"type": "integer", "minimum": 0},
        "temperature": {**TEMPERATURE, "maximum": 1.5}, "top_p": TOP_P, "random_seed": SEED,
        "stop": STOP, "stream": BOOLEAN, "user": STRING, **TOKENFILL}),
    "/tokenize": ("llama.cpp tokenize", {"content": STRING}),
    "/api/show": ("Ollama show: the model's template", {"name": STRING, "model": STRING}),
}
REQUIRED = {"/v1/completions": ["prompt"], "/v1/fim/completions": ["prompt"],
            "/tokenize": ["content"]}
GETS = {"/v1/models": "OpenAI models", "/health": "llama.cpp health", "/props": "llama.cpp props",
        "/api/tags": "Ollama tags", "/api/version": "Ollama version",
        "/stats": "tokenfill's counters"}


def document() -> dict:
    paths: dict[str, dict] = {}
    for route, (summary, fields) in ROUTES.items():
        schema = {"type": "object", "properties": fields}
        if route in REQUIRED:
            schema["required"] = REQUIRED[route]
        paths[route] = {"post": {
            "summary": summary,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}},
            "responses": {"200": {"description": "the completion (or a stream of its pieces)"},
                          "400": {"description": "a field is wrong; the message names it"},
                          "415": {"description": "the body was not sent as application/json"},
                          "503": {"description": "the model is loading"}}}}
    for route, summary in GETS.items():
        paths[route] = {"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "tokenfill", "version": __version__,
                     "description": "Code completion at the cursor; every protocol editors "
                                    "speak, over one engine."},
            "paths": paths}
