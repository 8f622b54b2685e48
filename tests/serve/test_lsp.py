"""The real language server over stdio, driven by pytest-lsp's client."""

from __future__ import annotations

import json
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from benchmarks.lsp_client import RawClient

pytestmark = pytest.mark.e2e

URI = "file:///work/demo.py"


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "tokenfill",
                                                              "lsp"]))
async def client(lsp_client: LanguageClient, request):
    model = request.getfixturevalue("chatty_model_dir")
    encodings = getattr(request, "param", None)
    general = types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None
    result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(general=general),
        initialization_options={"model": str(model), "debounceMs": 0, "maxTokens": 6,
                                # the fake model says only 'a' or 'b', never the partial word:
                                # plumbing is tested here, cursor modes in test_cursor
                                "cursorMode": "none"}))
    lsp_client.server_capabilities = result.capabilities
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, text: str) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=URI, language_id="python", version=1, text=text)))


def inline(client, line, character, kind=types.InlineCompletionTriggerKind.Invoked, selected=None):
    return client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(URI), position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=kind, selected_completion_info=selected)))


@pytest.mark.asyncio
async def test_inline_completion_after_incremental_edits(client: LanguageClient):
    open_doc(client, "def f(x):\n    return \n")
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(1, 11), types.Position(1, 11)), text="x + ")]))
    items = await inline(client, 1, 15)
    assert items and all(i.insert_text and set(i.insert_text) <= {"a", "b"} for i in items)
    assert items[0].range == types.Range(types.Position(1, 15), types.Position(1, 15))
    automatic = await inline(client, 1, 15, types.InlineCompletionTriggerKind.Automatic)
    assert len(automatic) == 1


@pytest.mark.asyncio
async def test_selected_completion_is_extended(client: LanguageClient):
    open_doc(client, "value = obj.ap\n")
    span = types.Range(types.Position(0, 12), types.Position(0, 14))
    items = await inline(client, 0, 14, selected=types.SelectedCompletionInfo(span, "append"))
    assert items and all(i.insert_text.startswith("append") and i.range == span for i in items)


@pytest.mark.asyncio
async def test_completion_fallback_is_one_text_edit(client: LanguageClient):
    open_doc(client, "x = \n")
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(URI), position=types.Position(0, 4)))
    assert len(result.items) == 1
    edit = result.items[0].text_edit
    assert edit.range.start == types.Position(0, 4) and edit.new_text


@pytest.mark.asyncio
async def test_acceptance_counts_and_llm_ls_requests(client: LanguageClient):
    open_doc(client, "y = \n")
    got = await client.protocol.send_request_async("llm-ls/getCompletions", {
        "textDocument": {"uri": URI}, "position": {"line": 0, "character": 4}})
    assert got.completions and got.completions[0].generated_text
    await client.workspace_execute_command_async(types.ExecuteCommandParams("tokenfill.accept", ["a"]))
    await client.protocol.send_request_async("llm-ls/rejectCompletion", {"completion_id": "1"})
    counts = await client.protocol.send_request_async("tokenfill/stats", {})
    assert counts.accepted == 1 and counts.rejected == 1 and counts.requests >= 1


@pytest.mark.asyncio
async def test_unknown_document_is_an_error_not_a_crash(client: LanguageClient):
    with pytest.raises(Exception):
        await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier("file:///nowhere.py"),
            position=types.Position(5, 0),
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked)))
    open_doc(client, "z = \n")
    assert await inline(client, 0, 4)  # still serving


@pytest.mark.asyncio
@pytest.mark.parametrize("client,expected", [(None, "utf-16"), (["utf-8", "utf-16"], "utf-8")],
                         indirect=["client"])
async def test_position_encoding_is_negotiated(client: LanguageClient, expected):
    assert client.server_capabilities.position_encoding == expected
    line = "s = 'é✓𝄞' + "  # 𝄞 is two UTF-16 units and four UTF-8 bytes
    open_doc(client, line + "\n")
    units = len(line.encode("utf-16-le")) // 2 if expected == "utf-16" else len(line.encode())
    items = await inline(client, 0, units)
    assert items and items[0].range.start == types.Position(0, units)


def test_offsets_on_non_ascii_lines_follow_the_encoding():
    from pygls.workspace import PositionCodec, TextDocument

    line = "s = 'é✓𝄞' + x\n"
    cursor = line.index("+")
    for encoding, column in [("utf-16", len(line[:cursor].encode("utf-16-le")) // 2),
                             ("utf-8", len(line[:cursor].encode())), ("utf-32", cursor)]:
        doc = TextDocument(URI, line, position_codec=PositionCodec(encoding=encoding))
        assert doc.offset_at_position(types.Position(0, column)) == cursor


async def configure(client: LanguageClient, **settings) -> None:
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"tokenfill": settings}))


@pytest.mark.asyncio
async def test_a_cancelled_request_is_answered_and_nothing_waits_behind_it(client: LanguageClient):
    """The request is held in its debounce wait when the editor cancels it (a generation of the
    fake model is too quick to catch mid-way: its drafts are always right)."""
    import asyncio
    import time

    await configure(client, debounceMs=5000)
    open_doc(client, "long = \n")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(URI), position=types.Position(0, 7),
        context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic))
    pending = asyncio.ensure_future(client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="to-cancel"))  # sent now
    await asyncio.sleep(0.3)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="to-cancel"))
    with pytest.raises(Exception, match="[Cc]ancel"):
        await pending
    start = time.perf_counter()
    assert await inline(client, 0, 7)  # invoked: no debounce, and nothing ahead of it
    assert time.perf_counter() - start < 5
    counts = await client.protocol.send_request_async("tokenfill/stats", {})
    assert counts.cancelled == 1


@pytest.mark.asyncio
async def test_newer_request_supersedes_older(client: LanguageClient):
    """Typing on while a request waits out its debounce: the older one is answered with
    nothing, the newer one with a completion."""
    import asyncio

    await configure(client, debounceMs=300)
    open_doc(client, "first = \n")
    older = asyncio.ensure_future(inline(client, 0, 8, types.InlineCompletionTriggerKind.Automatic))
    await asyncio.sleep(0.1)
    newer = await inline(client, 0, 8, types.InlineCompletionTriggerKind.Automatic)
    assert newer and await older is None
    counts = await client.protocol.send_request_async("tokenfill/stats", {})
    assert counts.superseded >= 1


@pytest.mark.asyncio
async def test_a_model_that_fails_to_load_is_an_error_until_a_good_one_is_set(
        client: LanguageClient, request):
    """Loading runs off the event loop: the server answers meanwhile, and a bad model directory
    is the completions' error, not a crash."""
    await configure(client, model="/nowhere/model")
    open_doc(client, "x = \n")
    with pytest.raises(Exception, match="tokenizer.json|nowhere"):
        await inline(client, 0, 4)
    counts = await client.protocol.send_request_async("tokenfill/stats", {})  # still answering
    assert counts.requests >= 1
    await configure(client, model=str(request.getfixturevalue("chatty_model_dir")))
    assert await inline(client, 0, 4)


@pytest.fixture
def raw(chatty_model_dir):
    client = RawClient()
    client.initialize({"model": str(chatty_model_dir), "debounceMs": 0, "maxTokens": 4,
                       "cursorMode": "none"})
    yield client
    client.close()


def test_inline_completion_is_offered_so_an_editor_asks_for_it(raw):
    assert raw.capabilities.get("inlineCompletionProvider") not in (None, False)
    raw.open(URI, "x = ")
    reply = raw.inline_completion(URI, 0, 4)
    assert reply["result"] and reply["result"][0]["insertText"]


def test_broken_frames_and_bad_params_get_answers_and_the_server_keeps_listening(raw):
    raw.open(URI, "x = ")
    raw.write(b"Content-Length: 99999999999999999999\r\n\r\n{}")
    raw.write(b"Content-Type: text/plain\r\n\r\n{\"lost\": true}")
    raw.write(b"Content-Length: 5\r\n\r\n{\"jsonrpc\": \"2.0\", \"id\": 99}")
    reply = raw.request("textDocument/inlineCompletion", {"textDocument": "not an object"})
    assert reply["error"]["code"] == -32602 and "traceback" not in json.dumps(reply)
    assert raw.inline_completion(URI, 0, 4)["result"]  # still listening, still completing
    assert raw.orphans.get(timeout=10)["error"]["code"] == -32700  # the cut message: not JSON


def test_a_document_never_opened_is_not_read_from_disk(raw, tmp_path):
    secret = tmp_path / "secret.py"
    secret.write_text("password = 'hunter2'\n")
    reply = raw.inline_completion(secret.as_uri(), 0, 5)
    assert reply["error"]["code"] == -32602 and "not open" in reply["error"]["message"]
    assert "data" not in reply["error"] or not reply["error"]["data"]


def test_a_bad_setting_is_left_out_and_completions_go_on(raw):
    raw.notify("workspace/didChangeConfiguration", {"settings": {"tokenfill": {
        "maxTokens": "abc", "cursorMode": "fuzzy", "debounceMs": -1,
        "engines": ["ftp://nowhere"]}}})
    raw.open(URI, "x = ")
    assert raw.inline_completion(URI, 0, 4)["result"]
    log = raw.close()
    assert "ignored setting maxTokens='abc'" in log and "ignored setting cursorMode='fuzzy'" in log
    assert "ignored setting engines=['ftp://nowhere']: expected a list of http://" in log


@pytest.mark.asyncio
async def test_outcomes_are_saved_locally_and_the_gate_holds_back(client: LanguageClient,
                                                                   request, tmp_path):
    import os
    import shutil
    from pathlib import Path

    from tokenfill.completion.confidence import Gate

    saved = Path(os.environ["XDG_STATE_HOME"]) / "tokenfill" / "telemetry.jsonl"
    before = saved.read_text().splitlines() if saved.exists() else []
    open_doc(client, "x = \n")
    items = await inline(client, 0, 4)
    await client.workspace_execute_command_async(types.ExecuteCommandParams(
        "tokenfill.accept", [items[0].insert_text, None]))
    assert await inline(client, 0, 4)
    assert await inline(client, 0, 4)                    # the one before was passed over
    records = [json.loads(x) for x in saved.read_text().splitlines()[len(before):]]
    assert [r["accepted"] for r in records] == [True, False]
    assert set(records[0]["features"]) >= {"mean_logprob", "min_logprob"}
    model = tmp_path / "gated"
    shutil.copytree(request.getfixturevalue("chatty_model_dir"), model)
    Gate({}, -1.0, {}, {}, threshold=0.5).save(model)     # every completion scores 0.27
    await configure(client, model=str(model), minConfidence=0.5)
    assert await inline(client, 0, 4, types.InlineCompletionTriggerKind.Automatic) is None
    asked = await inline(client, 0, 4)                    # invoked: answered, with its score
    assert asked and abs(asked[0].command.arguments[1] - 0.269) < 0.01
    counts = await client.protocol.send_request_async("tokenfill/stats", {})
    assert counts.held_back == 1


@pytest.fixture(scope="module")
def chatty_engine(chatty_model_dir, tmp_path_factory):
    from tokenfill.serve.launch import EngineProcess, engine_missing

    missing = engine_missing("llama.cpp")
    if missing:
        pytest.skip(missing)
    process = EngineProcess("llama.cpp", chatty_model_dir,
                            tmp_path_factory.mktemp("llama") / "engine.log", slots=1)
    yield process
    process.stop()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "tokenfill",
                                                              "lsp"]))
async def engine_client(lsp_client: LanguageClient, request):
    """The language server with its model on llama-server (the `engines` setting)."""
    model = request.getfixturevalue("chatty_model_dir")
    engine = request.getfixturevalue("chatty_engine")
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        initialization_options={"model": str(model), "engines": [engine.url], "debounceMs": 0,
                                "maxTokens": 6, "cursorMode": "none"}))
    yield engine
    await lsp_client.shutdown_session()


@pytest.mark.asyncio
async def test_inline_completion_with_the_model_on_an_engine(engine_client: LanguageClient,
                                                             chatty_engine):
    served = chatty_engine.log().count("print_timing")
    open_doc(engine_client, "def f(x):\n    return \n")
    items = await inline(engine_client, 1, 11)
    assert items and items[0].insert_text
    assert chatty_engine.log().count("print_timing") > served  # llama-server made it
