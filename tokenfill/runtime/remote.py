"""A model served by another engine (vLLM, llama.cpp's llama-server), behind the same seam as the
in-process runtime: token ids in, token ids out.

Everything else stays tokenfill's (engine.py): the prompt, the cursor mode, the stop rule, the
syntax-aware constraints, aborts. The engine streams its greedy or sampled tokens; each is checked
here against the constraints before it is taken. A token they refuse closes the stream, and one
step is asked for with the refused ids barred (vLLM's `allowed_token_ids`, llama.cpp's
`logit_bias`); then streaming resumes from the longer prompt, which the engine's prefix cache
holds. Greedy, that is the in-process `choose` exactly: the unconstrained argmax when allowed,
else the argmax over what the constraints allow. Sampled, taking an allowed draw and redrawing
within the allowed set after a refused one samples the allowed set in proportion, as in-process.

Several engines (replicas) of one model: a client's requests go to the same one (rendezvous
hashing on the request's key, so its prefix cache serves it); a replica that fails is set aside
for `RETRY_S` and the request goes on, from the tokens it already has, on the next one. When
none answers, `EngineError` says so; nothing waits forever (`READ_TIMEOUT_S`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import torch

from tokenfill.runtime.generate import Constraint, Generation, Sampling

log = logging.getLogger("tokenfill.remote")

TOP_LOGPROBS = 20      # per token, for the confidence gate (vLLM's default --max-logprobs)
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 30.0  # an engine silent this long mid-stream is taken for dead
RETRY_S = 10.0         # a failed replica is tried again after this long
POLL_S = 0.05          # how often an abort is looked for while the engine is silent
# exact needs the next-token distribution over every token along candidate byte paths; engines
# return the top few only, so the cursor inside a word is handled by token healing instead
CURSOR_FALLBACK = {"exact": "heal"}


class EngineError(RuntimeError):
    """No engine could finish the request: unreachable, an error answer, or gone mid-stream."""


@dataclass
class Step:
    """One token as an engine streamed it; `token` None: it ended on an end token it did not name."""
    token: int | None
    logprob: float = 0.0
    top: dict[int, float] = field(default_factory=dict)


class Wire(Protocol):
    """One engine kind's request and stream format (VLLM, LlamaServer)."""
    kind: str
    path: str

    def body(self, ids: list[int], max_tokens: int, sampling: Sampling, end_ids: frozenset[int],
             allowed: list[int] | None, banned: list[int] | None) -> dict:
        """The streaming request for `max_tokens` after `ids`; `allowed` or `banned`: the ids
        one constrained step may take, or may not (each engine uses the one it supports)."""
        ...

    def steps(self, event: dict) -> tuple[list[Step], bool]:
        """The tokens of one streamed event, and whether the stream is over."""
        ...


class VLLM:
    """vLLM's OpenAI completions with token-id prompts; tokens come back as `token_id:N`."""
    kind, path = "vllm", "/v1/completions"

    def __init__(self, model: str):
        self.model = model

    def body(self, ids, max_tokens, sampling, end_ids, allowed, banned):
        body = {"model": self.model, "prompt": ids, "max_tokens": max_tokens, "stream": True,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "min_p": sampling.min_p, "logprobs": TOP_LOGPROBS,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False,
                "stop_token_ids": sorted(end_ids)}
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if allowed is not None:
            body["allowed_token_ids"] = allowed
        return body

    def steps(self, event):
        choice = event["choices"][0]
        lp = choice.get("logprobs") or {}
        steps = [Step(_vllm_id(t), v if v is not None else 0.0,
                      {_vllm_id(k): x for k, x in (top or {}).items()})
                 for t, v, top in zip(lp.get("tokens", []), lp.get("token_logprobs", []),
                                      lp.get("top_logprobs") or [None] * len(lp.get("tokens", [])))]
        return steps, choice.get("finish_reason") is not None


def _vllm_id(text: str) -> int:
    return int(text.removeprefix("token_id:"))


class LlamaServer:
    """llama.cpp's `/completion` with token-id prompts; an end token ends the stream unnamed."""
    kind, path = "llama.cpp", "/completion"

    def body(self, ids, max_tokens, sampling, end_ids, allowed, banned):
        body = {"prompt": ids, "n_predict": max_tokens, "stream": True, "cache_prompt": True,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "top_k": sampling.top_k, "min_p": sampling.min_p, "n_probs": TOP_LOGPROBS,
                "return_tokens": True, "repeat_penalty": 1.0, "samplers": ["top_k", "top_p",
                                                                          "min_p", "temperature"]}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if banned:
            body["logit_bias"] = [[i, False] for i in banned]
        return body

    def steps(self, event):
        probs = event.get("completion_probabilities") or []
        steps = [Step(p["id"], p.get("logprob", 0.0),
                      {t["id"]: t["logprob"] for t in p.get("top_logprobs", [])}) for p in probs]
        if not probs:
            steps = [Step(t) for t in event.get("tokens", [])]
        over = bool(event.get("stop"))
        if over and event.get("stop_type") == "eos":
            steps.append(Step(None))
        return steps, over


@dataclass
class Replica:
    url: str
    wire: Wire | None = None      # found on first contact
    down_until: float = 0.0
    failures: int = 0


class Replicas:
    """The engines serving one model, and which of them is up."""

    def __init__(self, urls: Sequence[str], client: httpx.Client):
        if not urls:
            raise ValueError("at least one engine URL is needed")
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.client = client
        self.lock = threading.Lock()

    def order(self, key: str) -> list[Replica]:
        """Every replica, the ones up first, each group by rendezvous hash on `key`: a key keeps
        its replica while that one is up, and only that key's share moves when it fails."""
        now = time.monotonic()

        def rank(r: Replica) -> tuple[bool, bytes]:
            digest = hashlib.blake2b(f"{r.url}|{key}".encode(), digest_size=8).digest()
            return r.down_until > now, digest

        with self.lock:
            return sorted(self.replicas, key=rank)

    def failed(self, replica: Replica, why: str) -> None:
        with self.lock:
            replica.failures += 1
            replica.down_until = time.monotonic() + RETRY_S
        log.warning("engine %s failed (%s); set aside for %.0f s", replica.url, why, RETRY_S)

    def wire(self, replica: Replica) -> Wire:
        """The replica's kind: llama-server answers /props, vLLM /v1/models with the model's name."""
        if replica.wire is None:
            replica.wire = detect(self.client, replica.url)
        return replica.wire


def detect(client: httpx.Client, url: str) -> Wire:
    try:
        props = client.get(f"{url}/props")
        if props.status_code == 200 and "default_generation_settings" in props.json():
            return LlamaServer()
        models = client.get(f"{url}/v1/models")
        models.raise_for_status()
        return VLLM(models.json()["data"][0]["id"])
    except httpx.TransportError as e:
        raise EngineError(f"{url}: {describe_error(e)}") from e
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        raise EngineError(f"{url} is neither a vLLM nor a llama.cpp server ({type(e).__name__}: "
                          f"{e})") from e


class Remote:
    """Generation on remote engines, with `generate`'s contract (runtime/generate.py)."""

    def __init__(self, urls: Sequence[str], vocab_limit: int,
                 transport: httpx.BaseTransport | None = None):
        self.client = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S,
                                                         connect=CONNECT_TIMEOUT_S),
                                   transport=transport)
        self.replicas = Replicas(urls, self.client)
        self.vocab_limit = vocab_limit
        self.restarts = 0       # constrained single steps asked for (a token was refused)
        self.failovers = 0      # requests moved to another replica mid-way

    def describe(self) -> list[dict]:
        """Each replica: its URL, kind (once contacted) and whether it is set aside now."""
        now = time.monotonic()
        return [{"url": r.url, "kind": r.wire.kind if r.wire else None,
                 "up": r.down_until <= now, "failures": r.failures}
                for r in self.replicas.replicas]

    def check(self) -> list[str]:
        """Contact every replica now; the ones that do not answer, with the reason."""
        problems = []
        for replica in self.replicas.replicas:
            try:
                self.replicas.wire(replica)
            except EngineError as e:
                self.replicas.failed(replica, str(e))
                problems.append(str(e))
        return problems

    def generate(self, prompt: list[int], max_new_tokens: int, *,
                 end_ids: frozenset[int] = frozenset(), sampling: Sampling = Sampling(),
                 should_stop: Callable[[int], bool] | None = None,
                 constraints: Sequence[Constraint] = (),
                 observe: Callable[[Step], None] | None = None,
                 abort: Callable[[], bool] | None = None, key: str = "") -> Generation:
        """Up to `max_new_tokens` after `prompt`, as `runtime.generate.generate` makes them (end
        tokens, `should_stop`, constraints); `observe` sees each step taken, `abort` is polled
        while the engine is silent, and `key` keeps a client on one replica."""
        out = Generation(cache_valid=len(prompt))
        t0 = time.perf_counter()
        first: float | None = None
        barred: list[int] | None = None  # the last refused step's allowed ids
        attempts = 0
        while len(out.tokens) < max_new_tokens and out.finish_reason == "length":
            replica = self.replicas.order(key)[0]  # the ones set aside come last
            constrained, taken = barred is not None, 0
            try:
                wire = self.replicas.wire(replica)
                body = wire.body(prompt + out.tokens,
                                 1 if constrained else max_new_tokens - len(out.tokens),
                                 sampling, end_ids, allowed=barred,
                                 banned=None if barred is None
                                 else sorted(set(range(self.vocab_limit)) - set(barred)))
                barred = None
                for step in self._stream(wire, replica.url, body, abort):
                    first = first or time.perf_counter()
                    barred = self._take(step, out, end_ids, constraints, should_stop, observe)
                    if barred is not None:
                        if constrained:
                            raise EngineError(f"{replica.url} gave token {step.token}, outside "
                                              f"the ids the request allowed")
                        self.restarts += 1
                        break
                    taken += 1
                    if out.finish_reason != "length":
                        break
                attempts = 0
            except _Aborted:
                out.finish_reason = "aborted"
                break
            except (httpx.HTTPError, EngineError, ValueError, KeyError) as e:
                self.replicas.failed(replica, describe_error(e))
                attempts += 1
                if out.tokens:
                    self.failovers += 1
                if attempts >= len(self.replicas.replicas):
                    raise EngineError(f"no engine could finish the completion: "
                                      f"{describe_error(e)}") from e
                continue
            if not taken and barred is None:
                break  # the engine ended without a token (its context is full)
        end = time.perf_counter()
        out.prefill_s = (first or end) - t0
        out.decode_s = end - (first or end)
        out.prompt_evaluated = len(prompt)
        out.cache_valid = len(prompt) + len(out.tokens)
        return out

    def _take(self, step: Step, out: Generation, end_ids: frozenset[int],
              constraints: Sequence[Constraint], should_stop: Callable[[int], bool] | None,
              observe: Callable[[Step], None] | None) -> list[int] | None:
        """Take one streamed step into `out`; None, or the ids allowed instead of a refused step."""
        masks = [c.allowed() for c in constraints]
        token = step.token
        candidates = sorted(end_ids) if token is None else [token]
        fine = all(t < self.vocab_limit and all(m is None or (t < m.numel() and bool(m[t]))
                                                 for m in masks) for t in candidates)
        if not fine:
            return allowed_ids(masks, self.vocab_limit)
        if token is None:  # an unnamed end token, and every end token is allowed here
            out.finish_reason = "stop"
            return None
        for constraint in constraints:
            constraint.advance(token)
        if observe is not None and token not in end_ids:
            observe(step)
        if token in end_ids:
            out.finish_reason = "stop"
            return None
        out.tokens.append(token)
        out.forwards += 1
        if should_stop is not None and should_stop(token):
            out.finish_reason = "stop"
        return None

    def _stream(self, wire: Wire, base: str, body: dict,
                abort: Callable[[], bool] | None) -> Iterator[Step]:
        """The steps an engine streams for `body`; a reader thread keeps the wait abortable (the
        connection is closed on abort, and the engine then drops the request)."""
        url = base + wire.path
        events: queue.Queue = queue.Queue()
        done = threading.Event()
        opened: list[httpx.Response] = []

        def read() -> None:
            try:
                with self.client.stream("POST", url, json=body) as response:
                    opened.append(response)
                    if response.status_code != 200:
                        response.read()
                        raise EngineError(f"{url} answered {response.status_code}: "
                                          f"{response.text[:300]}")
                    for line in response.iter_lines():
                        if done.is_set():
                            return
                        if line.startswith("data: ") and line != "data: [DONE]":
                            events.put(json.loads(line[6:]))
                events.put(None)
            except Exception as e:  # handed to the caller's thread
                events.put(e)

        thread = threading.Thread(target=read, name="tokenfill-remote", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    event = events.get(timeout=POLL_S)
                except queue.Empty:
                    if abort is not None and abort():
                        raise _Aborted()
                    continue
                if event is None:
                    return
                if isinstance(event, Exception):
                    raise event
                if "error" in event:
                    raise EngineError(f"{url}: {event['error']}")
                steps, over = wire.steps(event)
                yield from steps
                if over:
                    return
        finally:
            done.set()
            for response in opened:  # closed now, not at its next line: the engine drops it
                try:
                    response.close()
                except Exception:  # noqa: BLE001 (the reader may be closing it as well)
                    pass


class _Aborted(EngineError):
    """The caller aborted while the engine was silent."""


def allowed_ids(masks: list[torch.Tensor | None], vocab_limit: int) -> list[int]:
    """The ids `choose` (runtime/generate.py) may pick under the masks: each mask narrows the
    set unless it would leave nothing, and ids past the tokenizer's vocabulary never count."""
    keep = torch.ones(vocab_limit, dtype=torch.bool)
    for mask in masks:
        if mask is None:
            continue
        narrowed = torch.zeros(vocab_limit, dtype=torch.bool)
        n = min(mask.numel(), vocab_limit)
        narrowed[:n] = mask[:n]
        narrowed &= keep
        if bool(narrowed.any()):
            keep = narrowed
    return keep.nonzero().flatten().tolist()


def describe_error(e: Exception) -> str:
    if isinstance(e, EngineError):
        return str(e)
    if isinstance(e, httpx.ConnectError):
        return "cannot connect"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
        return "the connection closed mid-stream"
    return f"{type(e).__name__}: {e}"
