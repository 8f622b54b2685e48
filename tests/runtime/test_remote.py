"""Remote engines behind the runtime seam, against fake engines that run the tiny model: greedy
completions equal in-process ones (constraints, end tokens and stop rules included), the allowed
set matches `choose`, a replica that dies mid-stream hands over to the next, none left is a clear
error, and an abort ends a silent wait."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfill.completion.engine import Engine
from tokenfill.completion.request import CompletionRequest
from tokenfill.runtime.generate import Sampling, choose
from tokenfill.runtime.remote import (CURSOR_FALLBACK, EngineError, LlamaServer, Remote, VLLM,
                                      allowed_ids)


class FakeEngine:
    """vLLM's or llama-server's streaming API over the tiny model, greedy, one token an event.
    `die_after`: the stream breaks after that many tokens (the process died); `delay`: seconds
    before each token."""

    def __init__(self, model, kind: str, die_after: int | None = None, delay: float = 0.0):
        self.model, self.kind, self.die_after, self.delay = model, kind, die_after, delay
        self.requests: list[dict] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/props":
            if self.kind == "llama.cpp":
                return httpx.Response(200, json={"default_generation_settings": {}})
            return httpx.Response(404)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        body = json.loads(request.content)
        self.requests.append(body)
        return httpx.Response(200, content=self.stream(body),
                              headers={"content-type": "text/event-stream"})

    def stream(self, body: dict):
        ids = list(body["prompt"])
        n = body.get("max_tokens", body.get("n_predict"))
        allowed = body.get("allowed_token_ids")
        banned = {i for i, ok in body.get("logit_bias", []) if ok is False}
        stops = set(body.get("stop_token_ids", [])) | ({0} if self.kind == "llama.cpp" else set())
        for i in range(n):
            if self.die_after is not None and i >= self.die_after:
                raise httpx.ReadError("the engine went away")
            time.sleep(self.delay)
            with torch.no_grad():
                logits = self.model(torch.tensor([ids]))[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep[allowed if allowed is not None else slice(None)] = True
            keep[sorted(banned)] = False
            token = int(logits.masked_fill(~keep, float("-inf")).argmax())
            top = torch.topk(logp, 5)
            if self.kind == "vllm":
                event = {"choices": [{"text": "", "finish_reason": None, "logprobs": {
                    "tokens": [f"token_id:{token}"], "token_logprobs": [float(logp[token])],
                    "top_logprobs": [{f"token_id:{int(t)}": float(v)
                                      for v, t in zip(top.values, top.indices)}]}}]}
                if token in stops or i == n - 1:
                    event["choices"][0]["finish_reason"] = "stop" if token in stops else "length"
            else:
                if token in stops:  # llama-server ends on an end token without naming it
                    yield b'data: {"stop": true, "stop_type": "eos", "tokens": []}\n\n'
                    return
                event = {"tokens": [token], "stop": i == n - 1, "completion_probabilities": [
                    {"id": token, "logprob": float(logp[token]),
                     "top_logprobs": [{"id": int(t), "logprob": float(v)}
                                      for v, t in zip(top.values, top.indices)]}]}
            yield f"data: {json.dumps(event)}\n\n".encode()
            if token in stops:
                return
            ids.append(token)


def remote_engine(local: Engine, fakes: dict[str, FakeEngine]) -> Engine:
    def route(request: httpx.Request) -> httpx.Response:
        fake = fakes[f"{request.url.scheme}://{request.url.host}:{request.url.port}"]
        return fake.handle(request)

    remote = Remote(list(fakes), len(local.tokenizer.token_bytes),
                    transport=httpx.MockTransport(route))
    engine = Engine(None, local.tokenizer, name="tiny", gate=None, remote=remote,
                    context=local.context)
    # one member lookup for both: jedi's answer within its time budget can differ between two
    # cold lookups, and the texts after `name.` must be compared on the same members
    engine.monitor = local.monitor
    return engine


@pytest.fixture(scope="module")
def local(model_dir) -> Engine:
    engine = Engine.load(model_dir, dtype="fp32")
    # a lookup past its budget answers () and then completes for the next asker: a slow first
    # (cold) lookup would give the two sides compared different members
    engine.monitor.timeout_s = 60
    # engines elsewhere choose their own tokens, which the member prior cannot weigh (usage.py)
    engine.member_prior = False
    return engine


CURSORS = [("def total(items):\n    result = 0\n    for item in items:\n        ", "\n    return result\n"),
           ("import os\n\ndef main(path):\n    with open(path) as f:\n        data = f.re", ""),
           ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.", ""),
           ("x = {'key': 'value', ", "}\nprint(x)\n")]


@pytest.mark.parametrize("kind", ["vllm", "llama.cpp"])
@pytest.mark.parametrize("mode", ["heal", "none"])
def test_greedy_completions_equal_in_process_ones(local, tiny_model, kind, mode):
    engine = remote_engine(local, {"http://a:1": FakeEngine(tiny_model, kind)})
    for prefix, suffix in CURSORS:
        for syntax in (True, False):
            request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24,
                                        cursor_mode=mode, syntax=syntax, speculative=False)
            here, there = local.complete(request), engine.complete(request)
            assert there.text == here.text, (prefix, syntax)
            assert there.finish_reason == here.finish_reason


def test_exact_runs_as_heal_and_stop_strings_hold(local, tiny_model):
    engine = remote_engine(local, {"http://a:1": FakeEngine(tiny_model, "vllm")})
    assert engine.cursor_mode(CompletionRequest(prefix="x = fo")) == CURSOR_FALLBACK["exact"]
    prefix, suffix = CURSORS[0]
    plain = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24, syntax=False,
                              cursor_mode="heal")
    text = local.complete(plain).text
    if len(text) < 2:
        pytest.skip("the tiny model says too little here to cut")
    stop = text[1:3]
    request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24, syntax=False,
                                cursor_mode="heal", stop=(stop,))
    assert engine.complete(request).text == local.complete(request).text == text.split(stop)[0]


def test_refused_tokens_are_asked_for_again_with_the_allowed_ids(local, tiny_model):
    fake = FakeEngine(tiny_model, "vllm")
    engine = remote_engine(local, {"http://a:1": fake})
    request = CompletionRequest(prefix="class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
                                max_tokens=8, cursor_mode="heal")
    assert engine.complete(request).text == local.complete(request).text
    constrained = [r for r in fake.requests if "allowed_token_ids" in r]
    assert engine.remote.restarts == len(constrained)
    assert all(r["max_tokens"] == 1 for r in constrained)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n_masks=st.integers(0, 3), density=st.floats(0.0, 0.5))
def test_allowed_ids_are_what_choose_may_pick(seed, n_masks, density):
    """The greedy pick under masks is the argmax over `allowed_ids`, the set a refused step asks
    the engine for; masks that would leave nothing are passed over, as `choose` does."""
    g = torch.Generator().manual_seed(seed)
    vocab, limit = 64, 60
    logits = torch.randn(vocab, generator=g)
    masks = [torch.rand(vocab, generator=g) < density for _ in range(n_masks)]

    class Fixed:
        def __init__(self, mask):
            self.mask = mask

        def allowed(self):
            return self.mask

        def advance(self, token):
            pass

    picked = choose(logits, Sampling(), None, limit, [Fixed(m) for m in masks])
    allowed = allowed_ids(masks, limit)
    assert picked == max(allowed, key=lambda i: float(logits[i]))


def test_a_replica_that_dies_mid_stream_hands_over(local, tiny_model):
    prefix, suffix = CURSORS[0]
    request = CompletionRequest(prefix=prefix, suffix=suffix, max_tokens=24, syntax=False,
                                cursor_mode="none", path="a.py")
    whole = local.complete(request)
    if len(whole.stats.tokens) < 4:
        pytest.skip("the tiny model ends too soon here")
    dying, healthy = FakeEngine(tiny_model, "vllm", die_after=2), FakeEngine(tiny_model, "vllm")
    engine = remote_engine(local, {"http://a:1": dying, "http://b:1": healthy})
    first = engine.remote.replicas.order("a.py")[0].url
    if first != "http://a:1":  # the dying one must be the key's first choice
        engine = remote_engine(local, {"http://a:1": healthy, "http://b:1": dying})
    made = engine.complete(request)
    assert made.text == whole.text
    assert engine.remote.failovers == 1
    resumed = healthy.requests[-1]["prompt"]
    assert len(resumed) > len(dying.requests[0]["prompt"])  # went on from the tokens it had
    assert [r["up"] for r in engine.remote.describe()].count(False) == 1


def test_no_replica_left_is_a_clear_error(local, tiny_model):
    engine = remote_engine(local, {"http://a:1": FakeEngine(tiny_model, "llama.cpp", die_after=1)})
    with pytest.raises(EngineError, match="no engine could finish the completion: the "
                                          "connection closed mid-stream"):
        engine.complete(CompletionRequest(prefix=CURSORS[0][0], max_tokens=24, syntax=False))


def test_abort_ends_a_silent_wait(local, tiny_model):
    engine = remote_engine(local, {"http://a:1": FakeEngine(tiny_model, "vllm", delay=2.0)})
    aborted = threading.Event()
    threading.Timer(0.2, aborted.set).start()
    t0 = time.perf_counter()
    made = engine.complete(CompletionRequest(prefix=CURSORS[0][0], max_tokens=24),
                           abort=aborted.is_set)
    assert made.finish_reason == "aborted" and made.text == ""
    assert time.perf_counter() - t0 < 1.5


def test_replicas_keep_a_key_and_move_only_its_share():
    remote = Remote([f"http://r{i}:1" for i in range(4)], 10)
    keys = [f"file{i}.py" for i in range(200)]
    before = {k: remote.replicas.order(k)[0].url for k in keys}
    assert len(set(before.values())) == 4
    assert before == {k: remote.replicas.order(k)[0].url for k in keys}
    gone = remote.replicas.replicas[0]
    remote.replicas.failed(gone, "test")
    after = {k: remote.replicas.order(k)[0].url for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert moved and all(before[k] == gone.url for k in moved)
    assert all(after[k] != gone.url for k in keys)


def test_wire_bodies_carry_the_sampling_and_the_barred_ids():
    sampling = Sampling(temperature=0.5, top_p=0.9, top_k=7, seed=3)
    v = VLLM("m").body([1, 2], 5, sampling, frozenset({0}), allowed=[4, 5], banned=[1, 2])
    assert v["prompt"] == [1, 2] and v["allowed_token_ids"] == [4, 5] and v["top_k"] == 7
    assert v["stop_token_ids"] == [0] and v["seed"] == 3 and v["model"] == "m"
    ll = LlamaServer().body([1, 2], 5, sampling, frozenset({0}), allowed=[4, 5], banned=[1, 2])
    assert ll["logit_bias"] == [[1, False], [2, False]] and ll["n_predict"] == 5
