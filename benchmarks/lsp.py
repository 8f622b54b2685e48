"""`python -m benchmarks lsp`: what the language server adds to the engine, and typing through it.

The same cursors (held-out holes, one per file) are completed through `tokenfill lsp` over stdio
as an editor asks (an automatic `textDocument/inlineCompletion`, debounce off), timed at the
client. The server logs each completion's own engine time (worker.py); the overhead of a request
is its round trip less that engine time: JSON-RPC, document sync, position conversion, the wait
for the worker thread and the hand-off back. Each cursor sits in its own document, so KV reuse
does not flatter the server. (The server's log is read as it is written: a log pipe nobody
drains fills up and stalls the server.)
Then the typing replay of `bench typing` runs through the language server instead of HTTP.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import BaseLanguageClient

from benchmarks.common import header, model_option
from tokenfill.eval import holes, realcode
from tokenfill.eval.stats import percentile
from tokenfill.serve.lsp import LspSettings


def position_of(prefix: str) -> types.Position:
    last = prefix.rsplit("\n", 1)[-1]
    return types.Position(prefix.count("\n"), len(last.encode("utf-16-le")) // 2)


ENGINE_MS = re.compile(r" completion: .* engine=([0-9.]+)ms")


async def start_server(client: BaseLanguageClient) -> list[str]:
    """Start `tokenfill lsp` for `client`; the list fills with the server's log lines."""
    await client.start_io(sys.executable, "-m", "tokenfill", "lsp")
    lines: list[str] = []

    async def drain(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            lines.append(line.decode(errors="replace"))

    client._async_tasks.append(asyncio.create_task(drain(client._server.stderr)))
    return lines


async def engine_ms(lines: list[str], count: int, timeout: float = 5.0) -> tuple[float, bool]:
    """The engine time of the `count`-th completion the server logged (waiting for it), and
    whether syntax-aware completion declined to make one there."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        found = [(float(m.group(1)), " completion: none," in line)
                 for line in lines if (m := ENGINE_MS.search(line))]
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.005)
    raise RuntimeError("the language server did not log the completion's engine time")


async def lsp_times(model: Path, cursors: list[holes.Hole], max_tokens: int
                    ) -> tuple[list[float], list[float]]:
    """Round trip and server-side engine time of each cursor's completion (ms)."""
    client = BaseLanguageClient("tokenfill-bench", "1")
    lines = await start_server(client)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        initialization_options={"model": str(model), "debounceMs": 0, "maxTokens": max_tokens}))
    client.initialized(types.InitializedParams())
    times, engine = [], []
    for i, hole in enumerate([cursors[0], *cursors]):  # the first one warms up
        uri = f"file:///bench/{i}.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=hole.prefix + hole.suffix)))
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=position_of(hole.prefix),
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic))
        began = time.perf_counter()
        await client.text_document_inline_completion_async(params)
        elapsed = (time.perf_counter() - began) * 1000
        server_ms, declined = await engine_ms(lines, i + 1)
        if i and not declined:  # a declined request (a comment, mid-word) costs next to nothing
            times.append(elapsed)
            engine.append(server_ms)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return times, engine


async def typing_replay(model: Path, regions: list, cps: float, max_tokens: int
                        ) -> tuple[list[float], int, int]:
    """Type each region keystroke by keystroke: an incremental didChange, then an automatic
    inlineCompletion (debounce on, as an editor would). A newer request supersedes the older one
    on the server, which then answers null. Returns latencies of the completions shown (answered
    with items), requests sent, and requests superseded (the server's count)."""
    client = BaseLanguageClient("tokenfill-bench", "1")
    await start_server(client)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        initialization_options={"model": str(model), "maxTokens": max_tokens}))
    client.initialized(types.InitializedParams())
    shown, sent = [], 0
    loop = asyncio.get_running_loop()

    async def ask(params: types.InlineCompletionParams) -> None:
        start = time.perf_counter()
        if await client.text_document_inline_completion_async(params):
            shown.append((time.perf_counter() - start) * 1000)

    for k, region in enumerate(regions):
        uri, text = f"file:///typing/{k}.py", region.before + region.after
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id="python", version=0, text=text)))
        pending, start = [], loop.time()
        for i, char in enumerate(region.typed, start=1):
            at = position_of(region.before + region.typed[:i - 1])
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(at, at), text=char)]))
            pending.append(asyncio.ensure_future(ask(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=position_of(region.before + region.typed[:i]),
                context=types.InlineCompletionContext(
                    types.InlineCompletionTriggerKind.Automatic)))))
            sent += 1
            await asyncio.sleep(max(0.0, start + i / cps - loop.time()))
        await asyncio.gather(*pending)
    counts = await client.protocol.send_request_async("tokenfill/stats", {})
    superseded = counts.superseded
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return shown, sent, superseded


def run(model: Path, n: int = 40, max_tokens: int = 16, seed: int = 0, typing_files: int = 6,
        typing_chars: int = 80, cps: float = 15.0) -> str:
    files = realcode.files()
    cursors = holes.cut(files, "mid-line", n, seed)
    lsp_ms, engine_side = asyncio.run(lsp_times(model, cursors, max_tokens))
    overhead = [b - a for a, b in zip(engine_side, lsp_ms)]
    from benchmarks.typing_load import regions

    typed, sent, superseded = asyncio.run(typing_replay(
        model, regions(typing_files, typing_chars, seed), cps, max_tokens))
    return "\n".join([
        header(f"python -m benchmarks lsp{model_option(model)}"),
        "",
        f"{len(cursors)} mid-line cursors in held-out files, one document each, max {max_tokens} "
        f"tokens, greedy; {len(cursors) - len(lsp_ms)} declined by syntax-aware completion (a "
        "comment, the middle of a word) are left out.",
        "",
        "| what | ms p50 | ms p95 |",
        "| --- | --- | --- |",
        f"| the engine's own time (logged by the server) | {percentile(engine_side, 0.5):.1f} | "
        f"{percentile(engine_side, 0.95):.1f} |",
        f"| round trip through `tokenfill lsp` (at the client) | {percentile(lsp_ms, 0.5):.1f} | "
        f"{percentile(lsp_ms, 0.95):.1f} |",
        f"| overhead (round trip less engine time, per request) | {percentile(overhead, 0.5):.1f} "
        f"| {percentile(overhead, 0.95):.1f} |",
        "",
        f"Overhead p50 {percentile(overhead, 0.5):.1f} ms (target < 5 ms).",
        "",
        f"Typing replay through the language server ({typing_files} regions of {typing_chars} "
        f"characters from held-out files at {cps:g} chars/s, one didChange and one automatic "
        f"inline request per keystroke, debounce {LspSettings().debounceMs} ms): {sent} requests, "
        f"{len(typed)} completions shown, {superseded} superseded "
        f"({superseded / max(sent, 1) * 100:.0f}%); latency of completions shown p50 "
        f"{percentile(typed, 0.5):.0f} ms, p95 {percentile(typed, 0.95):.0f} ms.",
    ])
