"""The real engines serving the bundled model (`make vllm-server`, `make llama-server`): greedy
completions through them are the in-process ones on HumanEval holes, an abort ends the request,
a replica that stops answering or is gone hands over to the next, `tokenfill serve --engine`
answers the real `openai` client with what the in-process engine writes, stop strings and
superseding work through an engine, an engine killed mid-stream is a clear error, and
`tokenfill complete --engine` prints what in-process prints.

They skip, saying why, only where `make engines` could not install an engine."""

from __future__ import annotations

import signal
import threading

import pytest

from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.eval.tasks import TaskSkipped, humaneval_rows
from tokenfill.paths import BUNDLED_MODEL
from tokenfill.runtime import remote
from tokenfill.runtime.remote import EngineError
from tokenfill.serve.launch import EngineProcess, ServerProcess, engine_missing

pytestmark = pytest.mark.e2e
HOLES = 16
NEAR_TIE = 0.01  # top-two probability margin under which two correct kernels may differ


def start(kind: str, tmp_path_factory, **options) -> EngineProcess:
    missing = engine_missing(kind)
    if missing:
        pytest.skip(missing)
    log = tmp_path_factory.mktemp(kind) / "engine.log"
    return EngineProcess(kind, BUNDLED_MODEL, log, **options)


@pytest.fixture(scope="module", params=["vllm", "llama.cpp"])
def engine_process(request, tmp_path_factory):
    process = start(request.param, tmp_path_factory)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def llama_process(tmp_path_factory):
    process = start("llama.cpp", tmp_path_factory)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def local() -> Engine:
    engine = Engine.load(BUNDLED_MODEL, dtype="fp32")  # the engines run the fp32 weights
    engine.gate = None
    return engine


@pytest.fixture(scope="module")
def holes() -> list[tuple[str, str]]:
    try:
        rows = humaneval_rows("HumanEval-SingleLineInfilling.jsonl.gz", limit=HOLES, seed=1)
    except TaskSkipped as e:
        pytest.skip(str(e))
    return [(row["prompt"], row["suffix"]) for row in rows]


def served(url: str, local: Engine) -> Engine:
    """The engine on `url`, sharing `local`'s member lookups: jedi's answer within its time
    budget can differ between two cold lookups, and texts after `name.` compare on the same."""
    engine = Engine.served([url], BUNDLED_MODEL)
    engine.gate = None
    engine.monitor = local.monitor
    return engine


def divergence(here, there) -> tuple[int, float] | None:
    """Where two completions' tokens first differ, and the in-process model's top-two margin
    there; None where they do not."""
    a, b = here.stats.tokens, there.stats.tokens
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k, here.stats.margins[k]
    if len(a) != len(b):
        k = min(len(a), len(b))
        margins = here.stats.margins
        return k, margins[k] if k < len(margins) else 0.0
    return None


@pytest.mark.parametrize("mode", ["heal", "none"])
def test_greedy_completions_are_the_in_process_ones(engine_process, local, holes, mode):
    engine = served(engine_process.url, local)
    same, ties = 0, []
    for prefix, suffix in holes:
        request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=48,
                                    cursor_mode=mode, speculative=False)
        here, there = local.complete(request), engine.complete(request)
        differ = divergence(here, there)
        if differ is None:
            assert there.text == here.text
            same += 1
        else:  # only a near tie may go either way (the kernels sum in other orders)
            assert differ[1] < NEAR_TIE, (engine_process.kind, prefix[-80:], here.text,
                                          there.text, differ)
            ties.append(differ)
    assert same >= len(holes) - 2, ties


def test_an_abort_ends_the_request_and_the_engine_serves_the_next(engine_process, local, holes):
    engine = served(engine_process.url, local)
    prefix, suffix = holes[0]
    calls = 0

    def abort() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2

    request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=200, syntax=False,
                                cursor_mode="none")
    made = engine.complete(request, abort=abort)
    assert made.finish_reason == "aborted" and made.tokens <= 3
    again = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24, cursor_mode="none",
                              speculative=False)
    assert engine.complete(again).text == local.complete(again).text


def test_a_replica_that_stops_answering_is_set_aside(llama_process, local, holes,
                                                      tmp_path_factory, monkeypatch):
    """A frozen replica (it accepts the connection, says nothing) and a killed one: the request
    goes on to the next; with none left it is a clear error, never a hang."""
    monkeypatch.setattr(remote, "READ_TIMEOUT_S", 1.0)
    prefix, suffix = holes[1]
    request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24, cursor_mode="none",
                                speculative=False, path="frozen.py")
    expected = local.complete(request).text
    doomed = start("llama.cpp", tmp_path_factory, slots=1)
    try:
        engine = Engine.served([doomed.url, llama_process.url], BUNDLED_MODEL)
        engine.gate, engine.monitor = None, local.monitor
        replicas = engine.remote.replicas
        key = next(k for k in (f"f{i}.py" for i in range(100))
                   if replicas.order(k)[0].url == doomed.url)
        request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24,
                                    cursor_mode="none", speculative=False, path=key)
        assert engine.complete(request).text == expected  # both up: the doomed one served it
        doomed.signal(signal.SIGSTOP)
        try:
            assert engine.complete(request).text == expected
            assert not next(r for r in engine.remote.describe() if r["url"] == doomed.url)["up"]
        finally:
            doomed.signal(signal.SIGCONT)
        alone = Engine.served([doomed.url], BUNDLED_MODEL)
        doomed.signal(signal.SIGKILL)
        with pytest.raises(EngineError, match="no engine could finish"):
            alone.complete(request)
    finally:
        doomed.stop()


def test_serve_with_an_engine_answers_the_openai_client(llama_process, local, holes,
                                                        tmp_path):
    openai = pytest.importorskip("openai")
    server = ServerProcess(BUNDLED_MODEL, tmp_path / "serve.log", "--engine", llama_process.url)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        for prefix, suffix in holes[:4]:
            answer = client.completions.create(model="tokenfill-small", prompt=prefix,
                                               suffix=suffix, max_tokens=32, temperature=0,
                                               extra_body={"speculative": False,
                                                           "min_confidence": 0})
            request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=32,
                                        speculative=False, min_confidence=0,
                                        cursor_mode="heal")  # what exact runs as there
            assert answer.choices[0].text == local.complete(request).text
        import httpx

        props = httpx.get(server.url + "/props").json()
        assert props["engines"][0]["url"] == llama_process.url
        assert props["engines"][0]["kind"] == "llama.cpp"
        assert props["cursor_fallback"] == {"exact": "heal"}
        log = server.log()
        assert "cursor mode exact runs as heal" in log
        stats = httpx.get(server.url + "/stats").json()
        assert stats["worker"]["completed"] >= 4 and "engines" in stats
    finally:
        server.stop()


def test_a_dead_engine_is_a_clear_error_through_the_server(tmp_path, tmp_path_factory):
    """The server stays up; the request gets an error that says the engine is gone."""
    import httpx

    doomed = start("llama.cpp", tmp_path_factory, slots=1)
    server = ServerProcess(BUNDLED_MODEL, tmp_path / "serve.log", "--engine", doomed.url)
    try:
        doomed.stop()
        answer = httpx.post(server.url + "/infill", json={"input_prefix": "def f(x):\n    ",
                                                          "input_suffix": "\n", "n_predict": 8},
                            timeout=30)
        assert answer.status_code >= 500
        assert "cannot connect" in answer.text
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.stop()
        doomed.stop()


@pytest.fixture(scope="module")
def chatty_engine(chatty_model_dir, tmp_path_factory):
    """llama-server running a model that writes 'a' and 'b' to its limit: time to supersede,
    cut or kill it mid-way."""
    process = start_model("llama.cpp", chatty_model_dir, tmp_path_factory)
    yield process
    process.stop()


def start_model(kind: str, model, tmp_path_factory, **options) -> EngineProcess:
    missing = engine_missing(kind)
    if missing:
        pytest.skip(missing)
    return EngineProcess(kind, model, tmp_path_factory.mktemp(kind) / "engine.log", **options)


def stream_infill(url: str, body: dict, on_first=None) -> tuple[str, list[dict]]:
    """The text of a streamed /infill and its events; `on_first` runs at the first piece."""
    import json

    import httpx

    text, events = "", []
    with httpx.stream("POST", url + "/infill", json={**body, "stream": True},
                      headers={"x-tokenfill-client": "editor"}, timeout=60) as answer:
        for line in answer.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            events.append(event)
            text += event.get("content", "")
            if on_first is not None and text:
                on_first()
                on_first = None
    return text, events


def test_stop_strings_and_superseding_through_an_engine(chatty_model_dir, chatty_engine,
                                                        tmp_path):
    """A stop string ends the completion; a newer request of the same client supersedes the
    running one, whose upstream request is then closed."""
    import httpx

    server = ServerProcess(chatty_model_dir, tmp_path / "serve.log", "--engine",
                           chatty_engine.url)
    try:
        body = {"input_prefix": "x = '", "input_suffix": "", "n_predict": 200, "syntax": False,
                "min_confidence": 0, "cursor_mode": "none"}
        whole = httpx.post(server.url + "/infill", json=body, timeout=60).json()["content"]
        assert len(whole) > 20
        cut = whole[10:12]
        stopped = httpx.post(server.url + "/infill", json={**body, "stop": [cut]},
                             timeout=60).json()
        assert stopped["content"] == whole.split(cut)[0]
        later: list = []

        def supersede() -> None:
            later.append(httpx.post(server.url + "/infill", json={**body, "n_predict": 5},
                                    headers={"x-tokenfill-client": "editor"}, timeout=60))

        # The streamed completion can also end by itself before the newer request is in (seen
        # on a busy machine: an end token after 132 characters, nothing superseded). So up to
        # three tries: one superseded stream is what is checked.
        for _ in range(3):
            before = httpx.get(server.url + "/stats").json()["worker"]
            later.clear()
            text, events = stream_infill(server.url, {**body, "n_predict": 4000 // 2},
                                         supersede)
            assert later and later[0].status_code == 200
            assert len(text) < 2000  # it ended early
            stats = httpx.get(server.url + "/stats").json()["worker"]
            if stats["superseded"] > before["superseded"]:
                break
        assert stats["superseded"] == before["superseded"] + 1, (stats, len(text), events[-1])
        assert stats["aborted"] == before["aborted"] + 1, (stats, len(text), events[-1])
    finally:
        server.stop()


def test_an_engine_that_dies_mid_stream_is_a_clear_error(chatty_model_dir, tmp_path,
                                                        tmp_path_factory):
    doomed = start_model("llama.cpp", chatty_model_dir, tmp_path_factory, slots=1)
    server = ServerProcess(chatty_model_dir, tmp_path / "serve.log", "--engine", doomed.url)
    try:
        body = {"input_prefix": "x = '", "input_suffix": "", "n_predict": 2000,
                "syntax": False, "min_confidence": 0, "cursor_mode": "none"}
        text, events = stream_infill(server.url, body, lambda: doomed.signal(signal.SIGKILL))
        errors = [e for e in events if "error" in e]
        assert errors, events[-3:]
        message = str(errors[-1])
        assert "no engine could finish the completion" in message
        assert "mid-stream" in message or "cannot connect" in message
    finally:
        server.stop()
        doomed.stop()


def test_complete_with_an_engine_prints_what_in_process_prints(llama_process, tmp_path):
    import subprocess
    import sys

    source = tmp_path / "shapes.py"
    source.write_text("def area(width, height):\n    return \n")
    common = [sys.executable, "-m", "tokenfill", "complete", str(source), "--line", "2",
              "--column", "12", "--dtype", "fp32", "--cursor-mode", "heal", "--no-speculative"]
    here = subprocess.run(common, capture_output=True, text=True, timeout=120)
    there = subprocess.run([*common, "--engine", llama_process.url], capture_output=True,
                           text=True, timeout=120)
    assert here.returncode == there.returncode == 0, there.stderr
    assert there.stdout == here.stdout and here.stdout.strip()
