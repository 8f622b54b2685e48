"""`python -m benchmarks fuzz`: thousands of fuzzed bodies against a real `tokenfill serve`, and
fuzzed messages against a real `tokenfill lsp`.

HTTP: bodies from a seeded generator (tokenfill/serve/fuzzing.py) on every route, mostly JSON
objects holding the route's fields with values at the edges (huge and tiny numbers, lone
surrogates, special-token text, long words, nested arrays), some not JSON at all, some sent
without `application/json`; one at a time, so that the server's CPU time and resident memory
around each request are that request's. Counted: 2xx, 4xx, 5xx, connection failures, and
whether the server was still up at the end; the worst request's CPU seconds and memory growth.

Language server: random frames (bad lengths, no length, bytes that are not JSON) and JSON-RPC
requests with random params; after every batch a valid request must still be answered.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from benchmarks.common import header, model_option
from benchmarks.lsp_client import RawClient
from tokenfill.serve.fuzzing import ROUTES, random_body, random_value
from tokenfill.serve.launch import ServerProcess

TICKS = 100  # clock ticks per second in /proc/PID/stat (USER_HZ)
TYPES = ["application/json"] * 18 + ["text/plain", None]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, every thread


def fuzz_http(model: Path, bodies: int, seed: int, progress: bool) -> dict:
    rng = random.Random(seed)
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "failed": 0}
    worst_cpu = worst_rss = 0.0
    fives: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(model, Path(tmp) / "server.log")
        try:
            pid = server.proc.pid
            start_rss = server.rss_bytes()
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for _ in tqdm(range(bodies), desc="fuzzed bodies", unit="body",
                              disable=not progress):
                    route = rng.choice(list(ROUTES))
                    body = random_body(rng, route)
                    kind = rng.choice(TYPES)
                    headers = {"content-type": kind} if kind else {}
                    cpu, rss = cpu_seconds(pid), server.rss_bytes()
                    try:
                        r = client.post(route, content=body, headers=headers)
                    except httpx.HTTPError:
                        counts["failed"] += 1
                        if server.proc.poll() is not None:
                            break
                        continue
                    worst_cpu = max(worst_cpu, cpu_seconds(pid) - cpu)
                    worst_rss = max(worst_rss, server.rss_bytes() - rss)
                    key = f"{r.status_code // 100}xx"
                    counts[key] = counts.get(key, 0) + 1
                    if r.status_code >= 500 or b"completion failed" in r.content:
                        fives.append(f"{route} {body[:200]!r} -> {r.status_code} {r.text[:200]}")
            alive = server.proc.poll() is None
            end_rss = server.rss_bytes() if alive else 0
            schema = schemathesis(server.url, seed) if alive else "not run: the server died"
        finally:
            server.stop()
    return {"sent": bodies, **counts, "alive": alive, "worst_cpu_s": worst_cpu,
            "worst_rss_mb": worst_rss / 2**20, "rss_growth_mb": (end_rss - start_rss) / 2**20,
            "fives": fives, "schemathesis": schema}


def schemathesis(url: str, seed: int, examples: int = 50) -> str:
    """Schemathesis (installed with the `eval` extra) driven by /openapi.json, checking that no
    answer is a server error; its summary line, or why it did not run."""
    st = Path(sys.executable).parent / "st"
    if not st.is_file():
        return "not run: schemathesis is not installed (pip install 'tokenfill[eval]')"
    run = subprocess.run([str(st), "run", f"{url}/openapi.json", "--checks",
                          "not_a_server_error", "--max-examples", str(examples), "--seed",
                          str(seed), "--no-color"], capture_output=True, text=True, timeout=1800)
    out = run.stdout + run.stderr
    cases = re.search(r"(\d+) generated, (\d+) passed(?:, (\d+) failed)?", out)
    verdict = "no issues found" if "No issues found" in out else \
        (re.findall(r"=+ (.*(?:issue|fail|error).*?) in [\d.]+s =+", out) or ["see its output"])[-1]
    return (f"{cases[1]} test cases generated, {cases[2]} passed: {verdict}" if cases
            else f"exit {run.returncode}: {out.strip().splitlines()[-1] if out.strip() else ''}")


def fuzz_lsp(model: Path, messages: int, seed: int) -> dict:
    rng = random.Random(seed)
    client = RawClient()
    answered = checks = 0
    try:
        client.initialize({"model": str(model), "debounceMs": 0, "maxTokens": 8})
        client.open("file:///fuzz.py", "x = ")
        methods = ["textDocument/inlineCompletion", "textDocument/completion",
                   "llm-ls/getCompletions", "workspace/didChangeConfiguration",
                   "textDocument/didChange", "tokenfill/stats", "no/such/method"]
        for i in range(messages):
            roll = rng.random()
            if roll < 0.1:
                client.write(rng.choice([b"Content-Length: 99999999999999999999\r\n\r\n{}",
                                         b"Content-Length: 3\r\n\r\n{\"jsonrpc\": \"2.0\"}",
                                         b"\r\n\r\n{\"lost\": 1}", b"garbage\r\n",
                                         b"Content-Length: x\r\n\r\n"]))
            else:
                body = {"jsonrpc": "2.0", "method": rng.choice(methods),
                        "params": random_value(rng)}
                if rng.random() < 0.7:
                    body["id"] = f"f{i}"
                data = json.dumps(body).encode()
                client.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
            if i % 25 == 24:
                checks += 1
                reply = client.request("tokenfill/stats", None, timeout=30)
                answered += "result" in reply
    except Exception as e:  # noqa: BLE001 - a server that stopped answering is the finding
        return {"messages": messages, "checks": checks, "answered": answered, "alive": False,
                "error": f"{type(e).__name__}: {e}"}
    alive = client.proc.poll() is None
    client.close()
    return {"messages": messages, "checks": checks, "answered": answered, "alive": alive}


def run(model: Path, bodies: int = 5000, lsp_messages: int = 500, seed: int = 0,
        progress: bool = True) -> str:
    started = time.perf_counter()
    http = fuzz_http(model, bodies, seed, progress)
    lsp = fuzz_lsp(model, lsp_messages, seed)
    minutes = (time.perf_counter() - started) / 60
    lines = [
        header(f"python -m benchmarks fuzz{model_option(model)} --bodies {bodies}"),
        f"seed {seed}; one request at a time; {minutes:.1f} min.", "",
        "| target | sent | 2xx | 4xx | 5xx | failed connections | still up | worst request: "
        "server CPU s / memory growth MB | memory growth over the run MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| HTTP routes | {http['sent']} | {http['2xx']} | {http['4xx']} | {http['5xx']} | "
        f"{http['failed']} | {'yes' if http['alive'] else 'NO'} | {http['worst_cpu_s']:.2f} / "
        f"{http['worst_rss_mb']:.1f} | {http['rss_growth_mb']:.1f} |",
        f"| language server | {lsp['messages']} messages | {lsp['answered']} of {lsp['checks']} "
        f"checks answered | | | | {'yes' if lsp['alive'] else 'NO'} | | |",
    ]
    lines += ["", f"Schemathesis on `/openapi.json` (every route, its `not_a_server_error` check, "
                  f"seed {seed}): {http['schemathesis']}."]
    if http["fives"]:
        lines += ["", "5xx answers:", *[f"- `{f}`" for f in http["fives"][:10]]]
    if "error" in lsp:
        lines += ["", f"Language server: {lsp['error']}"]
    return "\n".join(lines)
