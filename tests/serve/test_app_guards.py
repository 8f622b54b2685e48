"""What the HTTP app refuses before any work: bodies a web page could send without asking,
hosts it does not serve, values that are not plain JSON, a wrong API key; and what it answers
for a request that a newer one cut short. Starlette's test client over a fake engine."""

from __future__ import annotations

import threading
import time

import pytest
from starlette.testclient import TestClient

from tests.serve.fakes import FakeEngine
from tokenfill.serve.app import ServerSettings, create_app, host_name

URL = "http://127.0.0.1:8080"


def client_for(engine: FakeEngine, base_url: str = URL, **settings) -> TestClient:
    client = TestClient(create_app(ServerSettings(**settings), engine=engine), base_url=base_url)
    client.__enter__()
    deadline = time.time() + 10
    while client.get("/health").status_code == 503:
        assert time.time() < deadline, "the fake engine never became ready"
        time.sleep(0.01)
    return client


@pytest.fixture
def engine():
    return FakeEngine("x + 1")


@pytest.fixture
def client(engine):
    c = client_for(engine)
    yield c
    c.__exit__(None, None, None)


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"},
                                     {"content-type": "multipart/form-data; boundary=x"}, {}])
def test_a_body_not_sent_as_json_is_refused(client, engine, headers):
    r = client.post("/v1/completions", content=b'{"prompt": "a"}', headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    assert engine.requests == []


def test_json_with_a_charset_is_json(client):
    r = client.post("/v1/completions", content=b'{"prompt": "a"}',
                    headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example"])
def test_a_host_it_does_not_serve_gets_421(engine, host):
    c = client_for(engine)
    try:
        r = c.post("/v1/completions", json={"prompt": "a"}, headers={"host": host})
        assert r.status_code == 421 and "--allowed-host" in r.json()["error"]["message"]
        assert c.get("/props", headers={"host": host}).status_code == 421
        assert c.get("/props", headers={"host": "localhost:8080"}).status_code == 200
        assert c.get("/props", headers={"host": "[::1]:8080"}).status_code == 200
    finally:
        c.__exit__(None, None, None)
    assert engine.requests == []


def test_named_hosts_and_any_host_when_bound_to_all(engine):
    named = client_for(engine, base_url="http://code.internal:8080",
                       allowed_hosts=("code.internal",))
    anywhere = client_for(engine, base_url="http://box.lan:8080", host="0.0.0.0")
    try:
        assert named.get("/props").status_code == 200
        assert named.get("/props", headers={"host": "other"}).status_code == 421
        assert anywhere.get("/props").status_code == 200
    finally:
        named.__exit__(None, None, None)
        anywhere.__exit__(None, None, None)


def test_host_names_lose_their_port():
    assert host_name(b"example.com:8080") == "example.com"
    assert host_name(b"[::1]:8080") == "::1" and host_name(b"::1") == "::1"
    assert host_name(b"LOCALHOST") == "localhost"


def test_no_web_origin_may_read_answers_unless_allowed(engine):
    preflight = {"origin": "https://site.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"}
    closed = client_for(engine)
    opened = client_for(engine, cors_origins=("https://site.example",))
    try:
        r = closed.options("/v1/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = opened.options("/v1/completions", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://site.example"
        other = opened.options("/v1/completions", headers=preflight | {"origin": "https://x.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        closed.__exit__(None, None, None)
        opened.__exit__(None, None, None)


@pytest.mark.parametrize("body,field", [
    (b'{"prompt": "a", "temperature": NaN}', "NaN"),
    (b'{"prompt": "a", "top_p": Infinity}', "Infinity"),
    (b'{"prompt": "a", "temperature": 1e400}', "temperature"),
    (b'{"prompt": "a", "temperature": 1e-300}', "temperature"),
    (b'{"prompt": "a", "temperature": 1e308}', "temperature"),
    (b'{"prompt": "a", "seed": 9223372036854775808}', "seed"),
    (b'{"prompt": "\\ud800"}', "prompt"),
    (b'{"prompt": "a", "stop": ["\\udfff"]}', "stop"),
    (b'{"prompt": "a", "model": NaN}', "NaN"),
    (b'{"prompt": "a", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested"),
])
def test_values_that_are_not_plain_json_or_text_get_400(client, engine, body, field):
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and field in r.json()["error"]["message"]
    assert engine.requests == []


@pytest.mark.parametrize("route,body", [
    ("/infill", {"input_prefix": "a", "temperature": 1e-300}),
    ("/infill", {"input_prefix": "a", "seed": 2**64}),
    ("/api/generate", {"prompt": "a", "options": {"temperature": 1e308}}),
    ("/v1/fim/completions", {"prompt": "a", "random_seed": 2**63}),
])
def test_every_protocols_sampling_values_are_bounded(client, route, body):
    assert client.post(route, json=body).status_code == 400


def test_a_non_utf8_authorization_header_is_a_401_not_a_crash(engine):
    c = client_for(engine, api_key="secret")
    try:
        r = c.post("/v1/completions", json={"prompt": "a"},
                   headers={"authorization": b"Bearer \xff\xfe"})
        assert r.status_code == 401
        ok = c.post("/v1/completions", json={"prompt": "a"},
                    headers={"authorization": "Bearer secret"})
        assert ok.status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_props_names_the_model_without_its_path(client):
    assert "/" not in client.get("/props").json()["model_path"]


def test_a_superseded_request_says_so_in_every_protocol(engine):
    c = client_for(engine)
    engine.gate = threading.Event()
    answers = {}
    routes = {"openai": ("/v1/completions", {"prompt": "a"}),
              "llamacpp": ("/infill", {"input_prefix": "a"}),
              "ollama": ("/api/generate", {"prompt": "a", "stream": False})}

    def post(name: str) -> dict:
        route, body = routes[name]
        return c.post(route, json=body, headers={"x-tokenfill-client": name}).json()

    try:
        for name in routes:
            engine.gate.clear()
            engine.started.clear()
            first = threading.Thread(target=lambda n=name: answers.__setitem__(n, post(n)))
            first.start()
            assert engine.started.wait(5)  # the first is running, held at the gate
            newer = threading.Thread(target=post, args=(name,))
            newer.start()
            deadline = time.time() + 5
            while c.get("/stats").json()["worker"]["superseded"] < len(answers) + 1:
                assert time.time() < deadline, "the newer request superseded nothing"
                time.sleep(0.01)
            engine.gate.set()
            first.join(10)
            newer.join(10)
    finally:
        c.__exit__(None, None, None)
    assert answers["openai"]["choices"][0]["finish_reason"] == "cancelled"
    assert answers["llamacpp"]["stop_type"] == "aborted"
    assert answers["ollama"]["done_reason"] == "aborted"


def test_the_openapi_description_covers_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    served = {(r.path, m) for r in client.app.routes for m in getattr(r, "methods", ()) or ()
              if m in ("GET", "POST") and r.path not in ("/", "/openapi.json")}
    described = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    assert described == served
    infill = doc["paths"]["/infill"]["post"]["requestBody"]["content"]["application/json"]
    assert {"input_prefix", "cursor_mode", "n_indent"} <= set(infill["schema"]["properties"])
