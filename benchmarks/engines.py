"""tokenfill in-process, tokenfill over vLLM, tokenfill over llama-server, and llama-server's own
`/infill`, side by side in one run on the same weights and the same held-out holes.

Every side is asked through the same HTTP route (`/infill`, which tokenfill serves too), with
the defaults except `min_confidence: 0` (every completion is shown, so the texts compare), and
in-process once more in fp32 with `heal`, what the engines run, whose texts theirs must equal. Per
completion: latency p50/p95 as the client sees it, and the decode rate each server reports.
Under load: 8 and 32 clients at once, each sending its holes one after another; total tokens
generated per second of wall time. Identical: holes where the text equals that reference's
(llama-server's own `/infill` tokenizes the text itself, with another pre-tokenizer, so it is
a speed reference, not a text one).
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

from benchmarks.common import header, model_option
from tokenfill.eval import holes as holes_mod
from tokenfill.eval import realcode
from tokenfill.eval.stats import percentile
from tokenfill.serve.launch import EngineProcess, ServerProcess, engine_missing

KINDS = ("whole-line", "block-body")
# the engines serve the fp32 weights and run `exact` as `heal`: the same in-process is the side
# their texts must equal (the defaults pick bf16 where the CPU has fast bf16, and exact)
REFERENCE = "tokenfill in-process, fp32, heal"
# every side gets the same window of each file: llama-server's own /infill does not fit long
# files into the model's 768 tokens (it answers 400), tokenfill would fit them its own way
PREFIX_CHARS, SUFFIX_CHARS = 1200, 400


def window(hole):
    """The hole with its prefix and suffix cut to whole lines within the window."""
    prefix = hole.prefix[-PREFIX_CHARS:]
    prefix = prefix[prefix.find("\n") + 1:] if len(hole.prefix) > PREFIX_CHARS else prefix
    suffix = hole.suffix[:SUFFIX_CHARS]
    suffix = suffix[:suffix.rfind("\n") + 1] if len(hole.suffix) > SUFFIX_CHARS else suffix
    return replace(hole, prefix=prefix, suffix=suffix)


def ask(client: httpx.Client, url: str, hole, max_tokens: int, key: str) -> dict:
    t0 = time.perf_counter()
    answer = client.post(url + "/infill", json={
        "input_prefix": hole.prefix, "input_suffix": hole.suffix, "n_predict": max_tokens,
        "temperature": 0, "cache_prompt": True, "min_confidence": 0},
        headers={"x-tokenfill-client": key})
    answer.raise_for_status()
    body = answer.json()
    timings = body.get("timings", {})
    return {"text": body.get("content", ""), "ms": (time.perf_counter() - t0) * 1000,
            "tokens": timings.get("predicted_n", 0), "decode_ms": timings.get("predicted_ms", 0.0)}


def sequential(url: str, holes: list, max_tokens: int) -> list[dict]:
    with httpx.Client(timeout=120) as client:
        ask(client, url, holes[0], max_tokens, "warm")  # first-request costs out of the figures
        return [ask(client, url, hole, max_tokens, "one") for hole in holes]


def loaded(url: str, holes: list, max_tokens: int, clients: int, each: int) -> float:
    """Total tokens per second with `clients` sending `each` holes one after another."""
    def client_run(c: int) -> int:
        with httpx.Client(timeout=300) as client:
            return sum(ask(client, url, holes[(c * each + k) % len(holes)], max_tokens,
                           f"client{c}")["tokens"] for k in range(each))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client_run, range(clients)))
    return tokens / (time.perf_counter() - t0)


def run(model: Path, per_kind: int = 20, max_tokens: int = 64) -> str:
    missing = [why for kind in ("vllm", "llama.cpp") if (why := engine_missing(kind))]
    if missing:
        return "skipped: " + "; ".join(missing)
    files = realcode.files()
    holes = [window(h) for kind in KINDS for h in holes_mod.cut(files, kind, per_kind, seed=0)]
    logs = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    vllm = EngineProcess("vllm", model, logs / "vllm.log")
    llama = EngineProcess("llama.cpp", model, logs / "llama.log")
    sides = {}
    try:
        servers = {"tokenfill in-process": ServerProcess(model, logs / "local.log"),
                   REFERENCE: ServerProcess(model, logs / "local-fp32.log", "--dtype", "fp32",
                                            "--cursor-mode", "heal"),
                   "tokenfill over vLLM": ServerProcess(model, logs / "over-vllm.log",
                                                        "--engine", vllm.url),
                   "tokenfill over llama-server": ServerProcess(model, logs / "over-llama.log",
                                                                "--engine", llama.url)}
        urls = {name: s.url for name, s in servers.items()}
        urls["llama-server's own /infill"] = llama.url
        try:
            for name, url in urls.items():
                results = sequential(url, holes, max_tokens)
                sides[name] = {"results": results,
                               "load8": loaded(url, holes, max_tokens, 8, 4),
                               "load32": loaded(url, holes, max_tokens, 32, 2)}
        finally:
            for server in servers.values():
                server.stop()
    finally:
        vllm.stop()
        llama.stop()
    return table(model, sides, len(holes), per_kind, max_tokens)


def table(model: Path, sides: dict, n: int, per_kind: int, max_tokens: int) -> str:
    reference = [r["text"] for r in sides[REFERENCE]["results"]]
    lines = [header(f"python -m benchmarks engines --per-kind {per_kind}{model_option(model)}"),
             "",
             f"{n} held-out holes ({per_kind} each of {', '.join(KINDS)}; the last {PREFIX_CHARS} "
             f"characters before the cursor and the first {SUFFIX_CHARS} after it, in whole "
             f"lines), up to {max_tokens} tokens, greedy, through `/infill`:",
             "",
             "| side | p50 ms | p95 ms | tokens / completion | decode tokens/s | "
             "total tokens/s, 8 clients | total tokens/s, 32 clients | text as in fp32, heal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, side in sides.items():
        results = side["results"]
        ms = [r["ms"] for r in results]
        tokens = sum(r["tokens"] for r in results)
        decode_s = sum(r["decode_ms"] for r in results) / 1000
        same = ("(another tokenizer)" if name.startswith("llama-server's")
                else f"{sum(r['text'] == t for r, t in zip(results, reference))}/{n}")
        lines.append(f"| {name} | {percentile(ms, 0.5):.0f} | {percentile(ms, 0.95):.0f} | "
                     f"{tokens / n:.1f} | {tokens / decode_s if decode_s else 0:.0f} | "
                     f"{side['load8']:.0f} | {side['load32']:.0f} | {same} |")
    return "\n".join(lines)
