"""The language server's workspace context: folders indexed in the background, edits and file
events followed, nothing outside the folders read, and the context sent with completions."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.e2e

PRICING = '''def compute_total(prices, tax_rate):
    """Sum of prices with tax."""
    return sum(prices) * (1 + tax_rate)
'''


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "tokenfill",
                                                              "lsp"]))
async def client(lsp_client: LanguageClient, request):
    root = request.getfixturevalue("tmp_path") / "shop"
    (root / "pkg").mkdir(parents=True)
    (root / "pricing.py").write_text(PRICING)
    (root / "pkg" / "orders.py").write_text("import os\n")
    lsp_client.root = root
    lsp_client.registered = []

    @lsp_client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams) -> None:
        lsp_client.registered.extend(r.method for r in params.registrations)
    watch = types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True)
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
            workspace_folders=True, did_change_watched_files=watch)),
        workspace_folders=[types.WorkspaceFolder(root.as_uri(), "shop")],
        initialization_options={"model": str(request.getfixturevalue("chatty_model_dir")),
                                "debounceMs": 0, "maxTokens": 4, "cursorMode": "none"}))
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, path, text: str) -> str:
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    return uri


async def context_at(client: LanguageClient, uri: str, line: int, character: int):
    return await client.protocol.send_request_async("tokenfill/context", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character}})


async def until(check, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.2)
    return await check()


@pytest.mark.asyncio
async def test_completions_get_the_workspace_context(client: LanguageClient):
    root = client.root
    text = "from pricing import compute_total\n\ntotal = compute_total(\n"
    uri = open_doc(client, root / "pkg" / "orders.py", text)

    async def found():
        got = await context_at(client, uri, 2, 22)
        return got if got.indexed and any(c.path == "pricing.py" for c in got.chunks) else None

    got = await until(found)
    assert got is not None, await context_at(client, uri, 2, 22)
    assert got.workspace == str(root) and got.indexed and got.files == 2
    assert any(c.text.startswith("def compute_total(prices, tax_rate):") for c in got.chunks)
    assert all(c.path != "pkg/orders.py" for c in got.chunks)     # never the file itself
    items = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(2, 22),
        context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked)))
    assert items
    counts = await client.protocol.send_request_async("tokenfill/stats", {})
    assert counts.context_chunks >= 1
    assert client.registered == [types.WORKSPACE_DID_CHANGE_WATCHED_FILES]


@pytest.mark.asyncio
async def test_edits_and_file_events_reach_the_index_and_outside_files_do_not(
        client: LanguageClient, tmp_path):
    root = client.root
    uri = open_doc(client, root / "pkg" / "orders.py", "refund_order(\n")
    pricing = open_doc(client, root / "pricing.py", PRICING)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=pricing, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(
            PRICING + "\n\ndef refund_order(order_id):\n    pass\n")]))

    async def has(name):
        got = await context_at(client, uri, 0, 13)
        return any(name in c.text for c in got.chunks)

    assert await until(lambda: has("def refund_order(order_id)"))    # the live, unsaved text
    created = root / "shipping.py"
    created.write_text("def ship_parcel(box):\n    pass\n")
    client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
        [types.FileEvent(created.as_uri(), types.FileChangeType.Created)]))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument("ship_parcel(\n")]))
    assert await until(lambda: has("def ship_parcel(box)"))
    outside = tmp_path / "outside.py"
    outside.write_text("def leaked_secret():\n    pass\n")
    elsewhere = open_doc(client, outside, "leaked_secret(\n")
    client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
        [types.FileEvent(outside.as_uri(), types.FileChangeType.Changed)]))
    got = await context_at(client, elsewhere, 0, 14)
    assert got.workspace is None and got.chunks == []                # no workspace holds it
    await asyncio.sleep(1.5)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3),
        content_changes=[types.TextDocumentContentChangeWholeDocument("leaked_secret(\n")]))
    assert not await has("leaked_secret():")


@pytest.mark.asyncio
async def test_context_can_be_switched_off(client: LanguageClient):
    uri = open_doc(client, client.root / "pkg" / "orders.py", "compute_total(\n")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"tokenfill": {"context": False}}))
    got = await context_at(client, uri, 0, 14)
    assert got.workspace is None and got.chunks == []
