"""Each protocol adapter, through Starlette's test client over a fake engine: the client's fields
become the right `CompletionRequest`, and the answer has the shape that client expects."""

from __future__ import annotations

import json
import time

import pytest
from starlette.testclient import TestClient

from tests.serve.fakes import FakeEngine
from tokenfill.serve.app import ServerSettings, create_app


def client_for(engine: FakeEngine, **settings) -> TestClient:
    client = TestClient(create_app(ServerSettings(**settings), engine=engine),
                        base_url="http://127.0.0.1:8080")
    client.__enter__()
    deadline = time.time() + 10
    while client.get("/health").status_code != 200:  # the engine is handed over in a thread
        assert time.time() < deadline, "the fake engine never became ready"
        time.sleep(0.01)
    return client


@pytest.fixture
def engine():
    return FakeEngine("x + 1", pieces=2)


@pytest.fixture
def client(engine):
    c = client_for(engine)
    yield c
    c.__exit__(None, None, None)


def test_openai_completions_map_fields_and_answer_with_choices(client, engine):
    r = client.post("/v1/completions", json={"prompt": "y = ", "suffix": "\n", "max_tokens": 7,
                                             "temperature": 0.5, "stop": ["\n\n"], "seed": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["text"] == "x + 1" and body["choices"][0]["finish_reason"] == "length"
    sent = engine.requests[-1]
    assert (sent.prefix, sent.suffix, sent.max_tokens, sent.stop) == ("y = ", "\n", 7, ("\n\n",))
    assert sent.sampling.temperature == 0.5 and sent.sampling.seed == 3
    assert sent.cursor_mode == "exact" and sent.speculative and sent.syntax  # server defaults


def test_openai_stream_pieces_add_up_and_end_with_done(client):
    r = client.post("/v1/completions", json={"prompt": "y = ", "stream": True})
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "x + 1"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_llamacpp_infill_maps_its_fields(client, engine):
    r = client.post("/infill", json={
        "input_prefix": "def f():\n", "prompt": "    return ", "input_suffix": "\n",
        "input_extra": [{"filename": "a.py", "text": "A = 1"}], "n_predict": -1,
        "cache_prompt": False, "n_indent": 4, "t_max_predict_ms": 500, "cursor_mode": "heal",
        "single_line": True, "path": "pkg/f.py", "syntax": False})
    assert r.status_code == 200 and r.json()["content"] == "x + 1"
    sent = engine.requests[-1]
    assert sent.prefix == "def f():\n    return " and sent.extra == (("a.py", "A = 1"),)
    assert sent.max_tokens == 256 and sent.reuse is False and sent.n_indent == 4
    assert sent.time_budget_ms == 500 and sent.cursor_mode == "heal" and sent.single_line
    assert sent.path == "pkg/f.py" and sent.syntax is False
    assert sent.sampling.temperature == 0.8 and sent.sampling.top_k == 40  # llama.cpp defaults


def test_ollama_generate_streams_ndjson_by_default(client, engine):
    r = client.post("/api/generate", json={"model": "m", "prompt": "a", "suffix": "b",
                                           "options": {"num_predict": -1, "temperature": 0}})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert "".join(line["response"] for line in lines) == "x + 1" and lines[-1]["done"]
    assert engine.requests[-1].max_tokens == 256 and engine.requests[-1].suffix == "b"


def test_mistral_fim_answers_chat_shaped(client, engine):
    r = client.post("/v1/fim/completions", json={"prompt": "a", "suffix": "b", "max_tokens": 5,
                                                 "random_seed": 2})
    message = r.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "x + 1"}
    assert engine.requests[-1].sampling.seed == 2


@pytest.mark.parametrize("route,body,field", [
    ("/v1/completions", {"prompt": "a", "cursor_mode": "fuzzy"}, "cursor_mode"),
    ("/infill", {"input_prefix": "a", "n_indent": -1}, "n_indent"),
    ("/v1/completions", {"prompt": "a", "max_tokens": "many"}, "max_tokens"),
    ("/v1/completions", {"prompt": "\ud800"}, "prompt"),
    ("/api/generate", {"prompt": "a", "options": {"top_p": 2}}, "options.top_p"),
])
def test_a_bad_field_is_a_400_naming_it(client, engine, route, body, field):
    r = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400 and f"'{field}'" in r.json()["error"]["message"]
    assert engine.requests == []


def test_a_suffix_without_fim_tokens_is_a_501():
    engine = FakeEngine(fim=False)
    c = client_for(engine)
    try:
        r = c.post("/v1/completions", json={"prompt": "a", "suffix": "b"})
        assert r.status_code == 501 and "fill-in-the-middle" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "a"}).status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_server_defaults_apply_where_the_body_is_silent():
    engine = FakeEngine()
    c = client_for(engine, cursor_mode="none", speculative=False, default_max_tokens=9)
    try:
        c.post("/v1/completions", json={"prompt": "a"})
        c.post("/v1/completions", json={"prompt": "a", "cursor_mode": "exact"})
    finally:
        c.__exit__(None, None, None)
    first, second = engine.requests
    assert (first.cursor_mode, first.speculative, first.max_tokens) == ("none", False, 9)
    assert second.cursor_mode == "exact"


def test_the_language_servers_remote_backend_carries_the_whole_request(client, engine):
    """What `tokenfill lsp` sends a running server (llama.cpp's /infill plus tokenfill's own
    fields) arrives as the request the language server built."""
    from tokenfill.completion.request import CompletionRequest
    from tokenfill.runtime.generate import Sampling
    from tokenfill.serve.lsp import infill_body

    sent = CompletionRequest(prefix="obj.pa", suffix="\n", path="/w/a.py", project="/w",
                             max_tokens=12, single_line=True, cursor_mode="heal",
                             speculative=False, syntax=False, invoked=True, stop=("\n\n",),
                             n_indent=2, sampling=Sampling(temperature=0.7, top_p=0.9, seed=5))
    r = client.post("/infill", json=infill_body("file:///w/a.py", sent))
    assert r.status_code == 200
    assert engine.requests[-1] == sent


@pytest.mark.parametrize("route,body,last", [
    ("/v1/completions", {"prompt": "boom", "stream": True}, "sse-done"),
    ("/v1/fim/completions", {"prompt": "boom", "stream": True}, "sse-done"),
    ("/infill", {"input_prefix": "boom", "stream": True}, "sse"),
    ("/api/generate", {"prompt": "boom"}, "ndjson"),
])
def test_a_stream_that_fails_after_its_200_ends_with_an_error_event(client, route, body, last):
    r = client.post(route, json=body)
    assert r.status_code == 200
    if last == "ndjson":
        events = [json.loads(line) for line in r.text.splitlines()]
    else:
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        if last == "sse-done":
            assert events.pop() == "[DONE]"
        events = [json.loads(e) for e in events]
    error = events[-1]["error"]  # Ollama's is a string, the others' an object with a message
    assert "the model fell over" in (error if last == "ndjson" else error["message"])
