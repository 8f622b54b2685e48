"""`python -m benchmarks typing`: replay people typing real code through the HTTP API, as an editor does.

A replay types a region of a held-out file (realcode.py: packages the model never saw) character by
character at `cps` characters per second. Every keystroke sends one `/infill` request under the
typist's `id_slot`; the client cancels its previous request if that one is still running (its
answer would be stale), which aborts it on the server too. A completion is *shown* when it arrives
before the next keystroke (or at the end of the region). Shown completions are the quick ones by
construction, so their latency says little about reuse; the typist therefore also pauses at the
end of each word (a letter or digit followed by anything else) until that keystroke's completion
arrives, as a person reading a suggestion does. Those requests are the same in every run, so
their latency compares reuse on and off pair by pair. A request that syntax-aware completion
declines (a comment, the middle of a word: answered at once with no completion) is counted apart
and is neither shown nor part of the word-end latencies. The replay runs twice in one command,
against a server with KV reuse and one started with `--no-cache-reuse`; then a load phase runs
several typists at once against one server, once with each dtype, and watches for errors and
memory growth.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import header, model_option
from tokenfill.eval import realcode
from tokenfill.eval.stats import percentile
from tokenfill.serve.launch import ServerProcess


@dataclass
class Region:
    path: str
    before: str
    typed: str
    after: str


@dataclass
class Tally:
    sent: int = 0
    shown: int = 0
    declined: int = 0   # answered at once with no completion (syntax.py: a comment, mid-word)
    cancelled: int = 0
    errors: int = 0
    status_5xx: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    paused_ms: list[float] = field(default_factory=list)  # at word ends, where the typist waits


def regions(n: int, chars: int, seed: int) -> list[Region]:
    """`n` regions of `chars` characters, each starting at a `def` line of a different file."""
    rng = random.Random(seed)
    files = realcode.files()
    rng.shuffle(files)
    out = []
    for path, text in files:
        starts = [i for i, line in enumerate(text.splitlines(keepends=True))
                  if line.lstrip().startswith("def ")]
        if not starts:
            continue
        lines = text.splitlines(keepends=True)
        offset = sum(len(x) for x in lines[:rng.choice(starts)])
        if len(text) - offset < chars:
            continue
        out.append(Region(path, text[:offset], text[offset:offset + chars],
                          text[offset + chars:]))
        if len(out) == n:
            break
    return out


def word_end(text: str, i: int) -> bool:
    """Does the i-th character typed (1-based) end a word?"""
    return i >= 2 and (text[i - 2].isalnum() or text[i - 2] == "_") and not (
        text[i - 1].isalnum() or text[i - 1] == "_")


async def _request(client: httpx.AsyncClient, url: str, region: Region, typed: int, slot: int,
                   n_predict: int, tally: Tally, paused: bool = False) -> None:
    start = time.perf_counter()
    tally.sent += 1
    try:
        r = await client.post(url + "/infill", json={
            "input_prefix": region.before + region.typed[:typed],
            "input_suffix": region.after,  # the rest of the region is not typed yet
            "n_predict": n_predict, "temperature": 0, "cache_prompt": True, "id_slot": slot})
    except httpx.HTTPError:
        tally.errors += 1
        return
    if r.status_code != 200:
        tally.errors += 1
        tally.status_5xx += r.status_code >= 500
        return
    if r.json().get("declined"):  # no completion here (a comment, the middle of a word)
        tally.declined += 1
        return
    tally.shown += 1
    tally.latencies_ms.append((time.perf_counter() - start) * 1000)
    if paused:
        tally.paused_ms.append(tally.latencies_ms[-1])


async def type_region(client: httpx.AsyncClient, url: str, region: Region, cps: float, slot: int,
                      n_predict: int, tally: Tally, pause: bool = False) -> None:
    loop = asyncio.get_running_loop()
    start, task = loop.time(), None
    for i in range(1, len(region.typed) + 1):
        if task is not None and not task.done():
            task.cancel()
            tally.cancelled += 1
        paused = pause and word_end(region.typed, i)
        task = asyncio.create_task(_request(client, url, region, i, slot, n_predict, tally,
                                            paused))
        if paused:  # read the suggestion, then type on at the same pace
            waited = loop.time()
            await asyncio.gather(task, return_exceptions=True)
            start += loop.time() - waited
        await asyncio.sleep(max(0.0, start + i / cps - loop.time()))
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


async def replay(url: str, todo: list[Region], cps: float, n_predict: int, slot: int = 1,
                 pause: bool = True) -> Tally:
    tally = Tally()
    async with httpx.AsyncClient(timeout=60) as client:
        for region in todo:
            await type_region(client, url, region, cps, slot, n_predict, tally, pause)
    return tally


async def load(url: str, todo: list[Region], clients: int, seconds: float, cps: float,
               n_predict: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds

    async def typist(k: int) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            i = k
            while time.monotonic() < deadline:
                await type_region(client, url, todo[i % len(todo)], cps, 100 + k, n_predict, tally)
                i += clients

    await asyncio.gather(*(typist(k) for k in range(clients)))
    return tally


LOAD_DTYPES = ("fp32", "bf16")  # both, whichever `auto` picks here


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run(model: Path, *, files: int = 12, chars: int = 120, cps: float = 15.0, n_predict: int = 16,
        load_clients: int = 8, load_seconds: float = 60.0, seed: int = 0) -> str:
    todo = regions(files, chars, seed)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in [("on", ()), ("off", ("--no-cache-reuse",))]:
            server = ServerProcess(model, Path(tmp) / f"{label}.log", *args)
            try:
                tally = asyncio.run(replay(server.url, todo, cps, n_predict))
                stats = httpx.get(server.url + "/stats").json()
            finally:
                server.stop()
            slots, worker = stats["slots"], stats["worker"]
            ran = worker["completed"] + worker["aborted"]
            evaluated = slots["evaluated_tokens"] / max(slots["requests"], 1)
            p50 = percentile(tally.paused_ms, 0.5)
            figures[label] = (p50, evaluated)
            rows.append(
                f"| {label} | {tally.sent} | {tally.declined} | {tally.shown} | "
                f"{percentile(tally.latencies_ms, 0.5):.0f} / "
                f"{percentile(tally.latencies_ms, 0.95):.0f} | {len(tally.paused_ms)} | "
                f"{p50:.0f} / {percentile(tally.paused_ms, 0.95):.0f} | {evaluated:.1f} | "
                f"{slots['prompt_tokens'] / max(slots['requests'], 1):.0f} | "
                f"{worker['aborted'] / max(ran, 1) * 100:.0f}% | "
                f"{slots['hits'] / max(slots['requests'], 1) * 100:.0f}% | {tally.errors} |")
        loads = []
        for dtype in LOAD_DTYPES:
            server = ServerProcess(model, Path(tmp) / f"load-{dtype}.log", "--dtype", dtype)
            try:
                asyncio.run(replay(server.url, todo[:1], cps, n_predict))  # warm up
                rss_before = server.rss_bytes()
                tally = asyncio.run(load(server.url, todo, load_clients, load_seconds, cps,
                                         n_predict))
                rss_after = server.rss_bytes()
            finally:
                server.stop()
            loads.append(
                f"| {dtype} | {tally.sent} | {tally.shown} | {tally.errors} | "
                f"{tally.status_5xx} | {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} | "
                f"{(ratio(rss_after, rss_before) - 1) * 100:+.1f}% |")
    (p_on, e_on), (p_off, e_off) = figures["on"], figures["off"]
    return "\n".join([
        header(f"python -m benchmarks typing{model_option(model)}"),
        "",
        f"{len(todo)} regions of {chars} characters from held-out files, typed at {cps:g} chars/s, "
        f"one /infill request per keystroke (n_predict {n_predict}), the previous one cancelled; "
        "at each word end the typist waits for that keystroke's completion.",
        "",
        "| KV reuse | requests | declined | completions shown | shown ms p50 / p95 | word ends | "
        "word-end ms p50 / p95 | tokens evaluated / request | prompt tokens / request | aborted "
        "| cache hit rate | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Reuse on vs off: p50 latency at word ends {ratio(p_on, p_off):.2f}x (target <= 0.4x), "
        "tokens "
        f"evaluated per request {ratio(e_on, e_off):.3f}x (target <= 0.25x).",
        "",
        f"Load: {load_clients} typists for {load_seconds:g} s against one server, once in "
        "each dtype (the kernels and their caches differ); target: resident memory within +10%.",
        "",
        "| dtype | requests | completions shown | errors | 5xx | resident MiB | growth |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *loads,
    ])
