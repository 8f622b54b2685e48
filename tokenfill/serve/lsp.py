"""`tokenfill lsp`: a language server (stdio) that offers completions at the cursor.

- `textDocument/inlineCompletion` (LSP 3.18): several items when invoked, one when automatic;
  a `selectedCompletionInfo` is honoured (items extend the selected text and use its range).
- `textDocument/completion`: one item, the completion as a text edit at the cursor, for editors
  without inline completion.
- Incremental sync; `positionEncoding` negotiated by pygls (UTF-16 unless the client offers UTF-8).
- Per document: automatic requests wait `debounceMs`, and a newer request for the same document
  supersedes the older one, whose engine work is aborted; `$/cancelRequest` aborts it too.
- Settings from `initializationOptions` or `workspace/didChangeConfiguration` (under `tokenfill`
  or flat): `model` (checkpoint directory), `serverUrl` (a running `tokenfill serve` to use
  instead of an in-process engine), `maxTokens`, `singleLine`, `debounceMs`, `cursorMode`
  (`exact`, `heal` or `none`: how a cursor inside a token is handled), `context` (false: the
  open file alone) and `contextTokens` (the workspace context's budget; 0: a quarter of the
  model's window, or 512 tokens with `serverUrl`), `engines` (URLs of vLLM or llama.cpp servers
  that run `model` for the in-process engine, runtime/remote.py; `tokenfill lsp --engine URL`
  gives the default).
- Workspace context: the workspace folders (or the root) are indexed in the background
  (context/workspace.py) and each completion gets what they define that the cursor's code uses,
  and chunks like it, before the prefix; with `serverUrl` the context travels as `input_extra`.
  The index follows `didChange` (the live text, once typing pauses), `didSave`, `didClose`,
  `workspace/didChangeWatchedFiles` (registered when the client can) and folders added or
  removed; a file outside the folders is never read. `tokenfill/context` shows what a position
  would get.
- Accepted and rejected completions are counted (an item's `tokenfill.accept` command, or llm-ls's
  `llm-ls/acceptCompletion` / `llm-ls/rejectCompletion`); `tokenfill/stats` returns the counts.
  With `telemetry` (on), each shown completion's outcome and gate features are saved on this
  machine only (telemetry.py), for `tokenfill gate --telemetry` to refit the gate to this person.
- The model's confidence gate holds back automatic completions under `minConfidence` (default:
  the gate's threshold); an invoked one is always answered. Items carry the score (the accept
  command's second argument; a completion item's `data.confidence`).
- `llm-ls/getCompletions` is answered too, so llm.nvim, llm-vscode and llm-intellij work unchanged.
A model loads in a thread (at `initialize`, and when the settings name another one), so the server
keeps answering meanwhile; completions wait for it, and a model that fails to load is their error.
A failing request is logged (stderr) and answered with an LSP error; the server keeps running.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import unquote

import httpx
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.uris import to_fs_path
from pygls.workspace import TextDocument

from tokenfill import __version__
from tokenfill.completion.cursor_modes import CURSOR_MODES
from tokenfill.completion.request import UNLIMITED_TOKENS, CompletionRequest
from tokenfill.context.index import WorkspaceError
from tokenfill.context.workspace import Workspaces, approx_tokens
from tokenfill.paths import BUNDLED_MODEL
from tokenfill.runtime.generate import Sampling
from tokenfill.serve import lsp_io
from tokenfill.serve.telemetry import Telemetry, telemetry_path

log = logging.getLogger("tokenfill.lsp")
ACCEPT_COMMAND = "tokenfill.accept"
REMOTE_CONTEXT_TOKENS = 512   # the context budget when the model's window is not known here


@dataclass
class LspSettings:
    model: str = str(BUNDLED_MODEL)
    serverUrl: str | None = None  # noqa: N815 (the editors' JSON spelling)
    engines: list[str] | None = None  # vLLM / llama.cpp servers running the model
    maxTokens: int = 64           # noqa: N815
    singleLine: bool = False      # noqa: N815
    debounceMs: int = 40          # noqa: N815
    cursorMode: str = "exact"     # noqa: N815
    context: bool = True
    contextTokens: int = 0        # noqa: N815 (0: automatic)
    minConfidence: float | None = None  # noqa: N815 (None: the model's gate's threshold)
    telemetry: bool = True        # save what was shown and kept, locally, for `tokenfill gate`

    def update(self, options: Any) -> None:
        """Take the settings given; a value of the wrong kind is logged and left out, so the
        completions that follow still work."""
        if not isinstance(options, dict):
            return
        options = options.get("tokenfill", options)
        if not isinstance(options, dict):
            return
        known = {f.name for f in fields(self)}
        for key, value in options.items():
            if key not in known or value is None:
                continue
            problem = setting_problem(key, value)
            if problem:
                log.warning("ignored setting %s=%r: %s", key, value, problem)
            else:
                setattr(self, key, value)


_SETTING_KINDS = {"model": str, "serverUrl": str, "engines": list, "maxTokens": int,
                  "singleLine": bool,
                  "debounceMs": int, "cursorMode": str, "context": bool, "contextTokens": int,
                  "minConfidence": float, "telemetry": bool}


def setting_problem(key: str, value: Any) -> str:
    """What is wrong with a setting's value ("" when nothing is)."""
    kind = _SETTING_KINDS[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return f"expected {'a whole number' if kind is int else kind.__name__}"
    if key == "engines" and not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                    for u in value):
        return "expected a list of http:// or https:// URLs"
    if key == "minConfidence" and not 0 <= value <= 1:
        return "expected 0 to 1"
    if key == "cursorMode" and value not in CURSOR_MODES:
        return f"expected one of {', '.join(CURSOR_MODES)}"
    if key == "maxTokens" and not 1 <= value <= UNLIMITED_TOKENS:
        return f"expected 1 to {UNLIMITED_TOKENS}"
    if key == "debounceMs" and not 0 <= value <= 10_000:
        return "expected 0 to 10000"
    if key == "contextTokens" and not 0 <= value <= 1_000_000:
        return "expected 0 (automatic) to 1000000"
    return ""


@dataclass
class Counts:
    requests: int = 0
    shown: int = 0
    superseded: int = 0
    cancelled: int = 0
    accepted: int = 0
    rejected: int = 0
    context_chunks: int = 0       # pieces of workspace context sent with completions
    held_back: int = 0            # completions the confidence gate did not show


@dataclass(frozen=True)
class Answer:
    text: str
    confidence: float | None      # the gate's score, where the model has a gate
    features: dict | None         # what the gate scored (in-process only), for telemetry


class InProcessBackend:
    """The engine in this process, behind the same worker the HTTP server uses."""

    def __init__(self, model: str, engines: tuple[str, ...] = ()):
        from tokenfill.completion.engine import Engine
        from tokenfill.serve.worker import Worker

        self.worker = Worker(Engine.open(model, engines=engines), n_slots=2)

    async def complete(self, key: str, request: CompletionRequest) -> Answer:
        from tokenfill.serve.worker import Job

        job = Job(request=request, key=key)
        self.worker.submit(job)
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "done":
                    features = (value.stats.features()
                                if value.stats is not None and len(value.stats) else None)
                    return Answer(value.text, value.confidence, features)
                if kind == "error":
                    raise RuntimeError(value)
        finally:
            job.cancel("cancelled by the editor")  # no-op once done

    def close(self) -> None:
        self.worker.close()


class RemoteBackend:
    """A running `tokenfill serve`, through its llama.cpp `/infill` route."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client = httpx.AsyncClient(timeout=60)

    async def complete(self, key: str, request: CompletionRequest) -> Answer:
        r = await self.client.post(self.url + "/infill", json=infill_body(key, request))
        r.raise_for_status()
        body = r.json()
        return Answer(body["content"], body.get("confidence"), None)

    def close(self) -> None:
        pass


def infill_body(key: str, request: CompletionRequest) -> dict:
    """The request as llama.cpp's `/infill` body, with tokenfill's own fields for the rest."""
    s = request.sampling
    return {"input_prefix": request.prefix, "input_suffix": request.suffix,
            "n_predict": request.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
            "top_k": s.top_k, "min_p": s.min_p, "seed": -1 if s.seed is None else s.seed,
            "stop": list(request.stop), "n_indent": request.n_indent, "id_slot": key,
            "cache_prompt": request.reuse, "cursor_mode": request.cursor_mode,
            "speculative": request.speculative, "syntax": request.syntax,
            "invoked": request.invoked, "single_line": request.single_line,
            "path": request.path, "project": request.project,
            "min_confidence": request.min_confidence,
            "input_extra": [{"filename": f, "text": t} for f, t in request.extra]}


class TokenfillProtocol(LanguageServerProtocol):
    """pygls's protocol, whose error answers keep their message but not the Python traceback
    (that goes to the server's log, stderr)."""

    def _send_response(self, msg_id, result=None, error=None):
        if error is not None and error.data is not None:
            error = types.ResponseError(code=error.code, message=error.message)
        super()._send_response(msg_id, result=result, error=error)


class TokenfillServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("tokenfill", __version__, protocol_cls=TokenfillProtocol)
        self.settings = LspSettings()
        self.counts = Counts()
        self.backend: asyncio.Future | None = None  # -> InProcessBackend | RemoteBackend
        self.latest: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.workspaces = Workspaces(budget=REMOTE_CONTEXT_TOKENS)
        self.telemetry = Telemetry(telemetry_path())
        self.engines: tuple[str, ...] = ()  # vLLM / llama.cpp servers running the model

    def configure(self, options: Any) -> None:
        """Apply settings; a new model or server URL loads a new backend in a thread, so the
        server keeps answering (completions wait for it; a failed load is their error)."""
        def source() -> tuple:
            return self.settings.model, self.settings.serverUrl, self.settings.engines

        before = source()
        self.settings.update(options)
        if self.backend is None or before != source():
            self.backend = asyncio.ensure_future(self._load(self.backend, self.settings.model,
                                                            self.settings.serverUrl))
        self.workspaces.configure(**self.context_options(self.loaded_backend()))

    def loaded_backend(self) -> InProcessBackend | RemoteBackend | None:
        future = self.backend
        if future is None or not future.done() or future.cancelled() or future.exception():
            return None
        return future.result()

    def context_options(self, backend: InProcessBackend | RemoteBackend | None) -> dict:
        """How the workspaces count and spend context tokens: by the in-process model's tokenizer
        (and its window), which also counts their n-gram tables for the workspace drafter; by
        an estimate for a remote server, whose engine fits the prompt in the end."""
        if not isinstance(backend, InProcessBackend):
            return {"budget": self.settings.contextTokens or REMOTE_CONTEXT_TOKENS,
                    "count_tokens": approx_tokens, "tokenizer": None, "on_table": None}
        engine = backend.worker.engine
        return {"budget": self.settings.contextTokens or engine.context // 4,
                "count_tokens": lambda text: len(engine.tokenizer.encode(text)),
                "tokenizer": engine.tokenizer, "on_table": engine.workspace_tables.__setitem__}

    def add_folder(self, path: str | None) -> None:
        if path is None:
            return
        try:
            self.workspaces.add(path)
        except WorkspaceError as e:
            log.warning("workspace folder left out: %s", e)

    async def context(self, path: str, prefix: str, suffix: str
                      ) -> tuple[tuple[tuple[str, str], ...], str | None]:
        """The workspace context for a cursor in `path`, and the workspace's root."""
        ws = self.workspaces.owner(path) if self.settings.context else None
        if ws is None:
            return (), None
        got = await asyncio.to_thread(ws.retrieve, prefix, suffix, path)
        self.counts.context_chunks += got.chunks
        log.info("context for %s: %d chunks, %d tokens (%d definitions, %d similar%s), %.1f ms",
                 path, got.chunks, got.tokens, got.definitions, got.similar,
                 ", kept" if got.reused else "", got.ms)
        return got.pieces, str(ws.root)

    async def _load(self, previous: asyncio.Future | None, model: str, url: str | None
                    ) -> InProcessBackend | RemoteBackend:
        if previous is not None:
            try:
                old = await previous
            except Exception as e:  # noqa: BLE001 (its completions were answered with the error)
                log.warning("the previous backend had failed to load: %s", e)
            else:
                old.close()
        engines = tuple(self.settings.engines or self.engines)
        backend = RemoteBackend(url) if url else await asyncio.to_thread(
            InProcessBackend, model, engines)
        log.info("backend: %s", url or model + (f" on {', '.join(engines)}" if engines else ""))
        self.workspaces.configure(**self.context_options(backend))
        return backend

    def document(self, uri: str) -> TextDocument:
        """An open document: the server reads only what the editor showed it, never the disk."""
        if unquote(uri) not in self.workspace.text_documents:
            raise JsonRpcInvalidParams(f"{uri} is not open: send textDocument/didOpen first")
        return self.workspace.get_text_document(uri)

    async def completions(self, uri: str, position: types.Position, n: int, automatic: bool,
                          head: str = "") -> list[Answer] | None:
        """Up to `n` distinct completions at `position`, or None when superseded."""
        ticket = next(self.ids)
        self.latest[uri] = ticket
        self.counts.requests += 1
        try:
            if automatic and self.settings.debounceMs > 0:
                await asyncio.sleep(self.settings.debounceMs / 1000)
                if self.latest.get(uri) != ticket:
                    self.counts.superseded += 1
                    return None
            doc = self.document(uri)
            offset = doc.offset_at_position(position)
            prefix, suffix = doc.source[:offset] + head, doc.source[offset:]
            extra, root = await self.context(doc.path, prefix, suffix)
            if self.latest.get(uri) != ticket:
                self.counts.superseded += 1
                return None
            self.telemetry.ignored(uri)  # what was shown here before and not accepted
            answers: list[Answer] = []
            for i in range(n):
                sampling = Sampling() if i == 0 else Sampling(temperature=0.7, top_p=0.95, seed=i)
                # shielded: a cancelled request must not cancel the backend's loading
                backend = await asyncio.shield(self.backend)
                answer = await backend.complete(uri, CompletionRequest(
                    prefix=prefix, suffix=suffix, max_tokens=self.settings.maxTokens,
                    single_line=self.settings.singleLine, sampling=sampling,
                    cursor_mode=self.settings.cursorMode, invoked=not automatic, path=doc.path,
                    project=root or self.workspace.root_path, extra=extra,
                    min_confidence=self.settings.minConfidence))
                if self.latest.get(uri) != ticket:
                    self.counts.superseded += 1
                    return None
                if answer.text and all(answer.text != a.text for a in answers):
                    answers.append(answer)
                elif not answer.text and answer.confidence is not None and i == 0:
                    self.counts.held_back += 1
            self.counts.shown += len(answers)
            if answers and self.settings.telemetry:
                self.telemetry.shown(uri, answers[0])
            return answers
        except asyncio.CancelledError:
            self.counts.cancelled += 1
            raise


server = TokenfillServer()


@server.feature(types.INITIALIZE)
def initialize(ls: TokenfillServer, params: types.InitializeParams) -> None:
    ls.configure(params.initialization_options)


@server.feature(types.INITIALIZED)
async def initialized(ls: TokenfillServer, params: types.InitializedParams) -> None:
    """Index the workspace folders (the root when the client names none), and ask the client
    to tell of Python files created, changed or deleted outside the editor."""
    folders = [to_fs_path(f.uri) for f in ls.workspace.folders.values()] or [ls.workspace.root_path]
    for folder in folders:
        ls.add_folder(folder)
    caps = ls.client_capabilities.workspace
    watched = caps.did_change_watched_files if caps is not None else None
    if watched is not None and watched.dynamic_registration and len(ls.workspaces):
        await ls.client_register_capability_async(types.RegistrationParams([types.Registration(
            id="tokenfill-watch", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=types.DidChangeWatchedFilesRegistrationOptions(
                watchers=[types.FileSystemWatcher(glob_pattern="**/*.py{,i}")]))]))


@server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
def did_change_workspace_folders(ls: TokenfillServer,
                                 params: types.DidChangeWorkspaceFoldersParams) -> None:
    for folder in params.event.removed or []:
        ls.workspaces.remove(to_fs_path(folder.uri))
    for folder in params.event.added or []:
        ls.add_folder(to_fs_path(folder.uri))


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: TokenfillServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.workspaces.touch(ls.document(params.text_document.uri).path)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: TokenfillServer, params: types.DidChangeTextDocumentParams) -> None:
    """The live text is what other files' completions should see (once typing pauses)."""
    doc = ls.document(params.text_document.uri)
    ls.workspaces.touch(doc.path)
    ls.workspaces.changed(doc.path, doc.source)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: TokenfillServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.workspaces.changed(to_fs_path(params.text_document.uri))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: TokenfillServer, params: types.DidCloseTextDocumentParams) -> None:
    """Unsaved edits are gone with the editor's buffer: the disk's text is indexed again."""
    ls.workspaces.changed(to_fs_path(params.text_document.uri))


@server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def did_change_watched_files(ls: TokenfillServer,
                             params: types.DidChangeWatchedFilesParams) -> None:
    for change in params.changes:
        ls.workspaces.changed(to_fs_path(change.uri))


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def did_change_configuration(ls: TokenfillServer, params: types.DidChangeConfigurationParams):
    ls.configure(params.settings)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: TokenfillServer, params: types.InlineCompletionParams
                            ) -> list[types.InlineCompletionItem] | None:
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    selected = params.context.selected_completion_info
    position, head = params.position, ""
    if selected is not None:  # extend the selected item: complete after its text
        doc = ls.document(params.text_document.uri)
        start = doc.offset_at_position(selected.range.start)
        end = doc.offset_at_position(position)
        head = selected.text[end - start:] if selected.text.startswith(
            doc.source[start:end]) else ""
    answers = await ls.completions(params.text_document.uri, position, 1 if automatic else 3,
                                   automatic, head)
    if not answers:
        return None
    items = []
    for answer in answers:
        text = answer.text
        if selected is not None:
            insert, span = selected.text + text, selected.range
        else:
            insert, span = text, types.Range(position, position)
        items.append(types.InlineCompletionItem(
            insert_text=insert, range=span,
            command=types.Command(title="Accept completion", command=ACCEPT_COMMAND,
                                  arguments=[insert, answer.confidence])))
    return items


@server.feature(types.TEXT_DOCUMENT_COMPLETION)
async def completion(ls: TokenfillServer, params: types.CompletionParams
                     ) -> types.CompletionList | None:
    answers = await ls.completions(params.text_document.uri, params.position, 1,
                                   automatic=False)
    if not answers:
        return None
    text, confidence = answers[0].text, answers[0].confidence
    label = text.strip().split("\n", 1)[0][:60] or text
    return types.CompletionList(is_incomplete=True, items=[types.CompletionItem(
        label=label, kind=types.CompletionItemKind.Text, detail="tokenfill",
        text_edit=types.TextEdit(types.Range(params.position, params.position), text),
        insert_text_format=types.InsertTextFormat.PlainText, data={"confidence": confidence},
        command=types.Command(title="Accept completion", command=ACCEPT_COMMAND,
                              arguments=[text, confidence]))])


@server.command(ACCEPT_COMMAND)
def accept(ls: TokenfillServer, *args: Any) -> None:
    ls.counts.accepted += 1
    arguments = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    if arguments and isinstance(arguments[0], str):
        ls.telemetry.accepted(arguments[0])


@server.feature("llm-ls/acceptCompletion")
def llm_ls_accept(ls: TokenfillServer, params: Any) -> None:
    ls.counts.accepted += 1
    for uri in list(ls.telemetry.pending)[-1:]:
        ls.telemetry.accepted(ls.telemetry.pending[uri].text)


@server.feature("llm-ls/rejectCompletion")
def llm_ls_reject(ls: TokenfillServer, params: Any) -> None:
    ls.counts.rejected += 1
    ls.telemetry.rejected()


@server.feature("tokenfill/context")
async def context(ls: TokenfillServer, params: Any) -> dict:
    """What a completion at `position` in an open document would get from the workspace."""
    doc = ls.document(params.textDocument.uri)
    offset = doc.offset_at_position(types.Position(params.position.line,
                                                   params.position.character))
    extra, root = await ls.context(doc.path, doc.source[:offset], doc.source[offset:])
    ws = ls.workspaces.owner(doc.path) if root else None
    return {"workspace": root, "indexed": ws.ready.is_set() if ws else False,
            "files": ws.index.file_count() if ws else 0,
            "chunks": [{"path": path, "text": text} for path, text in extra]}


@server.feature("tokenfill/stats")
def stats(ls: TokenfillServer, params: Any) -> dict:
    return asdict(ls.counts)


@server.feature("llm-ls/getCompletions")
async def llm_ls_get_completions(ls: TokenfillServer, params: Any) -> dict:
    uri = params.textDocument.uri
    position = types.Position(params.position.line, params.position.character)
    answers = await ls.completions(uri, position, 1, automatic=False) or []
    return {"request_id": str(next(ls.ids)),
            "completions": [{"generated_text": a.text} for a in answers]}


def main(engines: tuple[str, ...] = ()) -> None:
    """Serve over stdio; `engines`: vLLM or llama.cpp servers to run the model on (`--engine`)."""
    server.engines = engines
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pygls").setLevel(logging.WARNING)  # it logs every message at INFO
    server._stop_event = threading.Event()
    try:  # stdio through lsp_io.py: its framing survives what a client gets wrong
        asyncio.run(lsp_io.serve(server.protocol, server._stop_event))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        server.workspaces.close()
        server.shutdown()
