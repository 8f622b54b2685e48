"""`tokenfill bench lsp`: what the language server adds to the engine, and typing through it.

The same cursors (held-out holes, one per file) are completed twice in one run: by the engine in
this process (greedy, the engine's own wall time), then through `tokenfill lsp` over stdio as an
editor asks (an automatic `textDocument/inlineCompletion`, debounce off), timed at the client.
The overhead is the per-cursor difference: JSON-RPC, document sync, position conversion and the
worker hand-off. Each cursor sits in its own document, so KV reuse does not flatter the server.
Then the typing replay of `bench typing` runs through the language server instead of HTTP.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import BaseLanguageClient

from . import holes, realcode
from .bench import header, percentile
from .completion import Engine
from .lsp import LspSettings


def position_of(prefix: str) -> types.Position:
    last = prefix.rsplit("\n", 1)[-1]
    return types.Position(prefix.count("\n"), len(last.encode("utf-16-le")) // 2)


async def lsp_times(model: Path, cursors: list[holes.Hole], max_tokens: int) -> list[float]:
    client = BaseLanguageClient("tokenfill-bench", "1")
    await client.start_io(sys.executable, "-m", "tokenfill", "lsp")
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        initialization_options={"model": str(model), "debounceMs": 0, "maxTokens": max_tokens}))
    client.initialized(types.InitializedParams())
    times = []
    for i, hole in enumerate([cursors[0], *cursors]):  # the first one warms up
        uri = f"file:///bench/{i}.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=hole.prefix + hole.suffix)))
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=position_of(hole.prefix),
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic))
        start = time.perf_counter()
        await client.text_document_inline_completion_async(params)
        if i:
            times.append((time.perf_counter() - start) * 1000)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return times


async def typing_replay(model: Path, regions: list, cps: float, max_tokens: int
                        ) -> tuple[list[float], int, int]:
    """Type each region keystroke by keystroke: an incremental didChange, then an automatic
    inlineCompletion (debounce on, as an editor would). A newer request supersedes the older one
    on the server, which then answers null. Returns latencies of the completions shown (answered
    with items), requests sent, and requests superseded (the server's count)."""
    client = BaseLanguageClient("tokenfill-bench", "1")
    await client.start_io(sys.executable, "-m", "tokenfill", "lsp")
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
    engine = Engine.load(model)
    engine.complete(cursors[0].prefix, cursors[0].suffix, max_tokens=max_tokens)  # warm up
    engine_ms = [engine.complete(h.prefix, h.suffix, max_tokens=max_tokens).total_ms
                 for h in cursors]
    del engine
    lsp_ms = asyncio.run(lsp_times(model, cursors, max_tokens))
    overhead = [b - a for a, b in zip(engine_ms, lsp_ms)]
    from .typing_bench import regions

    typed, sent, superseded = asyncio.run(typing_replay(
        model, regions(typing_files, typing_chars, seed), cps, max_tokens))
    return "\n".join([
        header(f"tokenfill bench lsp --model {model.name}"),
        "",
        f"{len(cursors)} mid-line cursors in held-out files, one document each, max {max_tokens} "
        "tokens, greedy.",
        "",
        "| path | ms p50 | ms p95 |",
        "| --- | --- | --- |",
        f"| engine in process | {percentile(engine_ms, 0.5):.1f} | {percentile(engine_ms, 0.95):.1f} |",
        f"| through `tokenfill lsp` (client round trip) | {percentile(lsp_ms, 0.5):.1f} | "
        f"{percentile(lsp_ms, 0.95):.1f} |",
        f"| overhead (per-cursor difference) | {percentile(overhead, 0.5):.1f} | {percentile(overhead, 0.95):.1f} |",
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
