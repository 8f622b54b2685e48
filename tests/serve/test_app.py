"""The real server (uvicorn, a subprocess on loopback) spoken to by real clients.

The served model is the 'chatty' fake: it never ends a line or emits an end token, so every
completion runs to its token limit and there is time to disconnect or supersede it mid-way.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from starlette.testclient import TestClient

from tests.serve.servers import Server
from tokenfill.serve.app import ServerSettings, create_app

pytestmark = pytest.mark.e2e


# --- the official openai client ---------------------------------------------------------------

def test_openai_client_plain_and_streaming(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    plain = client.completions.create(model=server.model_name, prompt="x = ", suffix="\n",
                                      max_tokens=6, temperature=0)
    assert plain.object == "text_completion"
    text = plain.choices[0].text
    assert re.fullmatch(r"[ab]+", text) and plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 6
    pieces = [c.choices[0].text for c in client.completions.create(
        model="m", prompt="x = ", suffix="\n", max_tokens=6, temperature=0, stream=True)]
    assert "".join(pieces) == text
    models = client.models.list()
    assert [m.id for m in models.data] == [plain.model]  # the served model, by its directory name


def test_openai_n_and_echo(server):
    r = httpx.post(server.url + "/v1/completions", json={
        "prompt": "y = ", "max_tokens": 3, "n": 2, "echo": True, "temperature": 0}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert all(c["text"].startswith("y = ") for c in r["choices"])


# --- each protocol's shapes -------------------------------------------------------------------

def test_llamacpp_infill_and_friends(server):
    r = httpx.post(server.url + "/infill", json={
        "input_prefix": "def f():\n", "prompt": "    x = ", "input_suffix": "\n",
        "input_extra": [{"filename": "util.py", "text": "def g():\n    pass\n"}],
        "n_predict": 4, "temperature": 0, "cache_prompt": True}).json()
    assert re.fullmatch(r"[ab]+", r["content"]) and r["stop"] is True
    assert r["stop_type"] == "limit" and r["timings"]["predicted_n"] == 4
    assert r["tokens_evaluated"] + r["tokens_cached"] > 0
    warm = httpx.post(server.url + "/infill", json={"input_prefix": "import os\n", "n_predict": 0})
    assert warm.status_code == 200 and warm.json()["content"] == ""
    after = httpx.post(server.url + "/infill", json={"input_prefix": "import os\n",
                                                     "n_predict": 2}).json()
    assert after["tokens_cached"] > 0
    fresh = httpx.post(server.url + "/infill", json={"input_prefix": "import os\n", "n_predict": 2,
                                                     "cache_prompt": False})
    assert fresh.status_code == 200 and fresh.json()["tokens_cached"] == 0
    lines = httpx.post(server.url + "/infill", json={
        "input_prefix": "z = ", "n_predict": 3, "stream": True, "temperature": 0}).text.split("\n\n")
    chunks = [json.loads(x[len("data: "):]) for x in lines if x.startswith("data: ")]
    assert chunks[-1]["stop"] is True and all(c["stop"] is False for c in chunks[:-1])
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/props").json()["total_slots"] == 4
    assert httpx.post(server.url + "/tokenize", json={"content": "ab"}).json()["tokens"]


def test_ollama_generate_stream_and_metadata(server):
    lines = httpx.post(server.url + "/api/generate", json={
        "model": "m", "prompt": "q = ", "suffix": "\n", "options": {"num_predict": 4,
                                                                    "temperature": 0}}).text
    objs = [json.loads(x) for x in lines.splitlines()]
    assert objs[-1]["done"] is True and objs[-1]["eval_count"] == 4
    assert all(o["done"] is False for o in objs[:-1])
    plain = httpx.post(server.url + "/api/generate", json={
        "prompt": "q = ", "suffix": "\n", "stream": False,
        "options": {"num_predict": 4, "temperature": 0}}).json()
    assert plain["response"] == "".join(o["response"] for o in objs)
    assert "{{ .Suffix }}" in httpx.post(server.url + "/api/show", json={"name": "m"}).json()["template"]
    assert httpx.get(server.url + "/api/tags").json()["models"]
    assert "version" in httpx.get(server.url + "/api/version").json()


def test_mistral_fim(server):
    r = httpx.post(server.url + "/v1/fim/completions", json={
        "model": "m", "prompt": "w = ", "suffix": "\n", "max_tokens": 3, "temperature": 0}).json()
    assert r["choices"][0]["message"]["content"] and r["object"] == "chat.completion"
    body = httpx.post(server.url + "/v1/fim/completions", json={
        "prompt": "w = ", "max_tokens": 3, "stream": True, "temperature": 0}).text
    assert body.rstrip().endswith("data: [DONE]") and '"delta"' in body


# --- typing: aborts and superseding -----------------------------------------------------------

def test_client_disconnect_aborts_generation(server):
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", server.url + "/v1/completions", json={
                "prompt": "long = ", "max_tokens": 2000, "stream": True, "temperature": 0}) as r:
            request_id = r.headers["x-request-id"]
            next(r.iter_lines())  # the first piece has arrived: generation is under way
    line = server.log_line(request_id)
    assert "aborted (client disconnected)" in line, line
    generated = int(re.search(r"\((\d+) tokens[^)]*\).*? engine=[0-9.]+ms aborted", line).group(1))
    assert generated < 2000


def test_newer_request_supersedes_older(server):
    results = {}

    def older():
        results["old"] = httpx.post(server.url + "/v1/completions", json={
            "prompt": "first = ", "max_tokens": 2000, "user": "editor-1", "temperature": 0},
            timeout=60)

    thread = threading.Thread(target=older)
    thread.start()
    time.sleep(0.5)
    newer = httpx.post(server.url + "/v1/completions", json={
        "prompt": "second = ", "max_tokens": 4, "user": "editor-1", "temperature": 0}, timeout=60)
    thread.join()
    assert newer.status_code == 200 and newer.json()["usage"]["completion_tokens"] == 4
    old = results["old"]
    assert old.status_code == 200
    assert old.json()["usage"]["completion_tokens"] < 2000
    line = server.log_line(old.headers["x-request-id"])
    assert "(superseded)" in line
    assert httpx.get(server.url + "/stats").json()["worker"]["superseded"] >= 1


# --- malformed requests -----------------------------------------------------------------------

@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", {"suffix": "x"}, 400, "'prompt'"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "arrays of prompts"),
    ("/v1/completions", {"prompt": "a", "max_tokens": "ten"}, 400, "'max_tokens' must be an integer"),
    ("/v1/completions", {"prompt": "a", "max_tokens": -3}, 400, "'max_tokens' must be >= 0"),
    ("/v1/completions", {"prompt": "a", "temperature": 9}, 400, "'temperature' must be <= 2"),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "a", "stop": [1]}, 400, "'stop'"),
    ("/v1/completions", {"prompt": "a", "n": 2, "stream": True}, 400, "'n'"),
    ("/infill", {"input_prefix": 3}, 400, "'input_prefix' must be a string"),
    ("/infill", {"input_extra": [{"filename": "a"}]}, 400, "'input_extra[0].text'"),
    ("/infill", {"input_extra": ["x"]}, 400, "input_extra[0]"),
    ("/infill", {"n_predict": -5}, 400, "'n_predict'"),
    ("/api/generate", {"prompt": "a", "options": {"num_predict": "x"}}, 400, "options.num_predict"),
    ("/api/generate", {"prompt": "a", "options": []}, 400, "'options'"),
    ("/v1/fim/completions", {"suffix": "a"}, 400, "'prompt'"),
    ("/tokenize", {}, 400, "'content'"),
    ("/v1/completions", {"prompt": "a", "cursor_mode": "fuzzy"}, 400, "'cursor_mode' must be one of"),
    ("/infill", {"cursor_mode": 3}, 400, "'cursor_mode' must be a string"),
    ("/api/generate", {"prompt": "a", "cursor_mode": "heal!"}, 400, "'cursor_mode'"),
    ("/v1/fim/completions", {"prompt": "a", "cursor_mode": ""}, 400, "'cursor_mode'"),
    ("/infill", {"speculative": "no"}, 400, "'speculative' must be true or false"),
    ("/v1/completions", {"prompt": "a", "speculative": 0}, 400, "'speculative'"),
    ("/infill", {"syntax": "off"}, 400, "'syntax' must be true or false"),
    ("/api/generate", {"prompt": "a", "invoked": 1}, 400, "'invoked'"),
    ("/nowhere", {}, 404, "no route"),
])
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, path, body, status, message):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} \
        if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert r.headers["x-request-id"].startswith("req-")
    ok = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 1})
    assert ok.status_code == 200


@pytest.mark.parametrize("mode", ["exact", "heal", "none", None])
def test_cursor_mode_field_reaches_the_engine(server, mode):
    """The server runs with --cursor-mode none: a request's field overrides it, its absence not."""
    body = {"input_prefix": "def f(x):\n    retu", "input_suffix": "\n", "n_predict": 2}
    if mode is not None:
        body["cursor_mode"] = mode
    r = httpx.post(server.url + "/infill", json=body)
    assert r.status_code == 200, r.text
    line = server.log_line(r.headers["x-request-id"])
    assert f"cursor={mode or 'none'}" in line
    assert ("prompt included" in line) == (mode == "exact")  # the exact cursor's own passes


@pytest.mark.parametrize("speculative", [True, False, None])
def test_speculative_field_reaches_the_engine(server, speculative):
    """Speculation is on unless a request says `speculative: false`; /infill reports its drafts
    as llama.cpp does (draft_n, draft_n_accepted)."""
    body = {"input_prefix": "def f(x):\n    ", "input_suffix": "\n", "n_predict": 6,
            "cursor_mode": "none"}
    if speculative is not None:
        body["speculative"] = speculative
    r = httpx.post(server.url + "/infill", json=body)
    assert r.status_code == 200, r.text
    timings = r.json()["timings"]
    line = server.log_line(r.headers["x-request-id"])
    on = speculative is not False
    assert ("drafts" in line) == on, line
    assert timings["forwards"] >= 1
    if not on:
        assert timings["draft_n"] == 0 and timings["draft_n_accepted"] == 0
    assert timings["draft_n_accepted"] <= timings["draft_n"]
    mean = timings["draft_n_accepted"] / timings["forwards"]
    assert timings["draft_mean_accepted"] == pytest.approx(mean, abs=1e-3)
    assert (f"{mean:.2f} per pass" in line) == on, line


def test_a_comment_gets_no_completion_unless_invoked(server):
    body = {"input_prefix": "x = 1  # the count of", "input_suffix": "\n", "n_predict": 4}
    r = httpx.post(server.url + "/infill", json=body)
    assert r.status_code == 200 and r.json()["content"] == "" and "comment" in r.json()["declined"]
    assert "completion: none, the cursor is in a comment" in server.log_line(r.headers["x-request-id"])
    r = httpx.post(server.url + "/infill", json=body | {"invoked": True})
    assert r.status_code == 200 and r.json()["declined"] == ""
    assert "syntax=line" in server.log_line(r.headers["x-request-id"])
    r = httpx.post(server.url + "/infill", json=body | {"syntax": False})
    assert r.status_code == 200 and "syntax=" not in server.log_line(r.headers["x-request-id"])


def test_oversized_body_gets_413(server):
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "' + b"a" * (3 * 2**20) + b'"}')
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_wrong_method_gets_405(server):
    assert httpx.get(server.url + "/v1/completions").status_code == 405


def test_server_binds_to_loopback_by_default(server):
    assert "127.0.0.1" in server.url
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True)
    if out.returncode == 0:
        assert f"0.0.0.0:{server.port}" not in out.stdout


# --- API key and models without FIM tokens ------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_plain_server(model_dir, tmp_path_factory):
    from tests.completion.test_fim import family_tokenizer

    plain = tmp_path_factory.mktemp("plain-model")
    for name in ("config.json", "model.safetensors"):
        (plain / name).write_bytes((model_dir / name).read_bytes())
    family_tokenizer(["<s>", "</s>"]).save(plain / "tokenizer.json")
    srv = Server(plain, tmp_path_factory.mktemp("log2") / "server.log", "--api-key", "sekret")
    yield srv
    srv.stop()


def test_api_key_is_required(keyed_plain_server):
    url = keyed_plain_server.url
    assert httpx.post(url + "/v1/completions", json={"prompt": "a"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(url + "/v1/completions", json={"prompt": "a"}, headers=wrong).status_code == 401
    assert httpx.get(url + "/health").status_code == 200


def test_fim_routes_answer_501_without_fim_tokens(keyed_plain_server):
    url, auth = keyed_plain_server.url, {"Authorization": "Bearer sekret"}
    r = httpx.post(url + "/infill", json={"input_prefix": "a"}, headers=auth)
    assert r.status_code == 501 and "fill-in-the-middle" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "suffix": "b"}, headers=auth)
    assert r.status_code == 501
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, headers=auth)
    assert r.status_code == 200


def test_model_still_loading_gets_503():
    app = create_app(ServerSettings())
    client = TestClient(app, base_url="http://127.0.0.1")  # no lifespan: no model loading
    r = client.post("/v1/completions", json={"prompt": "a"})
    assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
    assert client.get("/health").status_code == 503


def test_time_budget_ends_generation(server):
    start = time.perf_counter()
    r = httpx.post(server.url + "/infill", json={
        "input_prefix": "t = ", "n_predict": 2000, "t_max_predict_ms": 300, "temperature": 0},
        timeout=60).json()
    elapsed = time.perf_counter() - start
    assert r["stop_type"] == "limit" and 0 < r["timings"]["predicted_n"] < 2000
    assert r["timings"]["predicted_ms"] < 300 + 1000 and elapsed < 10


def read_all(sock: socket.socket, limit_s: float = 10) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_slow_clients_are_cut_off(chatty_model_dir, tmp_path):
    srv = Server(chatty_model_dir, tmp_path / "server.log", "--header-timeout", "1",
                 "--body-timeout", "1")
    try:
        host, port = "127.0.0.1", srv.port
        with socket.create_connection((host, port)) as idle, \
                socket.create_connection((host, port)) as slow_headers, \
                socket.create_connection((host, port)) as slow_body:
            slow_headers.sendall(b"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow_body.sendall(b"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                              b'{"input_')
            started = time.time()
            assert httpx.get(srv.url + "/health").status_code == 200  # others are served
            assert read_all(idle) == b"" and read_all(slow_headers) == b""
            assert time.time() - started < 8
            answer = read_all(slow_body)
            assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer
    finally:
        srv.stop()


def test_a_client_that_leaves_mid_body_is_no_server_error(server):
    before = server.log()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"input_prefix": "a')
        time.sleep(0.3)
    deadline = time.time() + 5
    while "went away before its request arrived" not in server.log() and time.time() < deadline:
        time.sleep(0.1)
    log = server.log()[len(before):]
    assert "went away before its request arrived" in log
    assert "internal error" not in log and "Traceback" not in log
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_workspace_adds_context_shown_in_timings_and_the_log(chatty_model_dir, tmp_path):
    ws = tmp_path / "shop"
    ws.mkdir()
    (ws / "pricing.py").write_text('def compute_total(prices, tax_rate):\n    """Sum with tax."""\n'
                                   "    return sum(prices) * (1 + tax_rate)\n")
    (ws / "orders.py").write_text("import os\nprint(os.sep)\n")
    srv = Server(chatty_model_dir, tmp_path / "server.log", "--cursor-mode", "none",
                 "--workspace", str(ws))
    try:
        body = {"input_prefix": "from pricing import compute_total\n\ntotal = compute_total(",
                "input_suffix": ")\n", "n_predict": 2, "path": "orders.py"}
        deadline = time.time() + 20                  # indexing runs in the background
        while True:
            r = httpx.post(srv.url + "/infill", json=body)
            timings = r.json()["timings"]
            if timings["context_n"] >= 1 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and timings["context_n"] >= 1
        assert timings["context_tokens"] > 0 and timings["context_ms"] >= 0
        line = srv.log_line(r.headers["x-request-id"])
        assert re.search(r"context=\d+ chunks/\d+ tokens \(1 definitions", line), line
        assert "workspace" in srv.log() and "indexing workspace" in srv.log()
        own = httpx.post(srv.url + "/infill", json={**body, "path": "pricing.py"}).json()
        assert own["timings"]["context_n"] == 0      # the file being completed is never retrieved
    finally:
        srv.stop()


def test_a_bad_workspace_stops_the_server_with_a_clear_message(chatty_model_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "tokenfill", "serve", "--model",
                             str(chatty_model_dir), "--workspace", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_the_confidence_gate_holds_back_scores_and_counts(chatty_model_dir, tmp_path):
    import shutil

    from tokenfill.completion.confidence import Gate

    model = tmp_path / "gated"
    shutil.copytree(chatty_model_dir, model)
    Gate({}, -1.0, {}, {}, threshold=0.5, exit_threshold=0.0).save(model)  # scores 0.27
    srv = Server(model, tmp_path / "server.log", "--cursor-mode", "none")
    try:
        body = {"input_prefix": "x = ", "n_predict": 4}
        held = httpx.post(srv.url + "/infill", json=body).json()
        assert held["content"] == "" and held["declined"] == "low confidence"
        assert abs(held["confidence"] - 0.269) < 0.01
        line = srv.log_line(httpx.post(srv.url + "/infill", json=body).headers["x-request-id"])
        assert "none, low confidence: confidence=0.269" in line
        asked = httpx.post(srv.url + "/infill", json={**body, "invoked": True}).json()
        assert asked["content"] and asked["timings"]["confidence"] == held["confidence"]
        shown = httpx.post(srv.url + "/infill", json={**body, "min_confidence": 0.2}).json()
        assert shown["content"] and not shown["declined"]
        bad = httpx.post(srv.url + "/infill", json={**body, "min_confidence": 2})
        assert bad.status_code == 400 and "min_confidence" in bad.text
        openai = httpx.post(srv.url + "/v1/completions", json={
            "prompt": "y = ", "max_tokens": 3, "logprobs": 1, "min_confidence": 0}).json()
        choice = openai["choices"][0]
        assert choice["confidence"] == held["confidence"]
        assert len(choice["logprobs"]["token_logprobs"]) == 3
        assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
        assert httpx.get(srv.url + "/stats").json()["worker"]["declined"]["low confidence"] == 2
    finally:
        srv.stop()
