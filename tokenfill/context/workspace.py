"""Workspaces kept indexed in the background, and the context they add to a request.

A `Workspace` is one folder: its index (index.py) is brought up to date by a process of its own
at a lower priority (Python's parser and the regular expressions would otherwise hold the
interpreter the completions run in), watched by a thread, so a cold 5,000-file repository never
holds up a completion: retrieval reads whatever is indexed so far (SQLite's WAL lets it read
while the other process writes). Progress goes to the log. After the
first pass the thread follows edits: `changed(path, text)` queues a file (the editor's live text,
or None to read the disk), and queued files are re-indexed after `SETTLE_S` of quiet, so a person
typing costs one re-index per pause, not one per keystroke. With a tokenizer, the thread also
counts the workspace's n-gram table for the `workspace` drafter and hands it to `on_table`.

`Workspaces` holds the folders a server or language server was given, finds the one that holds
a file, and adds its retrieved context to a request (`augment`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tokenfill.completion.request import CompletionRequest
from tokenfill.context.index import MAX_FILES, SUFFIXES, UpdateStats, WorkspaceIndex
from tokenfill.context.retrieve import Retrieved, Retriever
from tokenfill.runtime.tokenizer import Tokenizer
from tokenfill.speculative.ngram_table import NGramTable

log = logging.getLogger("tokenfill.context")

SETTLE_S = 1.0            # quiet after an edit before the file is re-indexed
TABLE_EVERY_S = 60.0      # the drafter's table is counted again at most this often after edits
PROGRESS_EVERY_S = 2.0    # how often indexing progress is logged
INDEX_NICE = 10           # the indexing process yields the CPU to completions


def approx_tokens(text: str) -> int:
    """A token count without the model's tokenizer (a remote backend): code runs about three
    characters a token; the engine fits the prompt by its own count in the end."""
    return (len(text) + 2) // 3


class Workspace:
    """One workspace folder: its index, kept current by a background thread, and its retriever.
    Raises `WorkspaceError` (index.py) for a path that is not a folder."""

    def __init__(self, root: str | Path, *, budget: int = 512,
                 count_tokens: Callable[[str], int] = approx_tokens,
                 tokenizer: Tokenizer | None = None,
                 on_table: Callable[[str, NGramTable], None] | None = None,
                 cache: Path | None = None, max_files: int = MAX_FILES):
        self.index = WorkspaceIndex(root, cache, max_files=max_files)
        self.retriever = Retriever(self.index, count_tokens, budget)
        self.tokenizer = tokenizer
        self.on_table = on_table
        self.ready = threading.Event()          # the first pass over the folder is done
        self.stats: UpdateStats | None = None
        self.progress = (0, 0)                  # files read, files found (first pass)
        self._pending: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._retrieving = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._indexer: subprocess.Popen | None = None

    @property
    def root(self) -> Path:
        return self.index.root

    def start(self) -> Workspace:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"tokenfill-index-{self.root.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def contains(self, path: str | Path) -> bool:
        return self.index.relative(path) is not None

    def changed(self, path: str | Path, text: str | None = None) -> bool:
        """Queue a file for re-indexing: `text` is the editor's live text, None reads the disk
        (a save, a close, a file created or deleted). False for a file outside the workspace or
        not Python: nothing outside the folder is ever read."""
        rel = self.index.relative(path)
        if rel is None or not rel.endswith(SUFFIXES):
            return False
        with self._lock:
            self._pending[rel] = text
        self._wake.set()
        return True

    def touch(self, path: str | Path) -> None:
        """A file was opened or edited: its chunks rank first among equals."""
        self.retriever.touch(str(path))

    def retrieve(self, prefix: str, suffix: str, path: str | None = None) -> Retrieved:
        with self._retrieving:  # the retriever remembers its last answers: one caller at a time
            return self.retriever.retrieve(prefix, suffix, path)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the first pass; True once it is done."""
        return self.ready.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._indexer is not None and self._indexer.poll() is None:
            self._indexer.terminate()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.index.close()

    # --- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._first_pass()
        except Exception:  # contained: completions go on without this workspace's context
            log.exception("indexing %s failed", self.root)
            self.ready.set()
            return
        table_due = False
        table_at = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=TABLE_EVERY_S if table_due else None)
            if self._stop.is_set():
                break
            if self._wake.is_set():
                self._wake.clear()
                if self._stop.wait(SETTLE_S):       # more edits within the pause join this batch
                    break
                with self._lock:
                    pending, self._pending = self._pending, {}
                for rel, text in pending.items():
                    try:
                        self.index.update_file(rel, text)
                    except Exception:  # one unreadable file never stops the thread
                        log.exception("re-indexing %s failed", rel)
                table_due = table_due or bool(pending)
            if table_due and time.monotonic() - table_at >= TABLE_EVERY_S:
                self._count_table()
                table_due, table_at = False, time.monotonic()

    def _first_pass(self) -> None:
        log.info("indexing workspace %s", self.root)
        command = [sys.executable, "-m", "tokenfill.context.index", str(self.root),
                   "--cache", str(self.index.db_path.parent), "--max-files",
                   str(self.index.max_files), "--nice", str(INDEX_NICE)]
        self._indexer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
        last = 0.0
        for line in self._indexer.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "stats" in message:
                self.stats = UpdateStats(**message["stats"])
            elif "error" in message:
                raise RuntimeError(message["error"])
            elif "done" in message:
                self.progress = (message["done"], message["total"])
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_S:
                    last = now
                    log.info("indexing %s: %d of %d files", self.root, *self.progress)
        code = self._indexer.wait()
        if self._stop.is_set():
            return
        if code != 0 or self.stats is None:
            raise RuntimeError(f"the indexer exited with {code}: {self._indexer.stderr.read()}")
        s = self.stats
        log.info("workspace %s: %d files (%d indexed, %d unchanged, %d removed, %d skipped), "
                 "%d chunks, %.1f s", self.root, self.index.file_count(), s.indexed, s.unchanged,
                 s.removed, s.skipped, s.chunks, s.seconds)
        self.ready.set()
        self._count_table()

    def _count_table(self) -> None:
        if self.tokenizer is None or self.on_table is None:
            return
        from tokenfill.context.drafts import workspace_table

        table, info = workspace_table(self.index, self.tokenizer)
        self.on_table(str(self.root), table)
        log.info("workspace %s drafts: %d contexts from %d files (%d tokens), %.1f s", self.root,
                 len(table), info["files"], info["tokens"], info["seconds"])


class Workspaces:
    """The workspace folders of one server, each indexed in the background. `options` go to
    every `Workspace` made."""

    def __init__(self, **options):
        self.options = options
        self._by_root: dict[Path, Workspace] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_root)

    def __iter__(self):
        return iter(list(self._by_root.values()))

    def add(self, root: str | Path) -> Workspace:
        """Index a folder (in the background); the same folder twice is one workspace."""
        resolved = Path(root).expanduser().resolve()
        with self._lock:
            found = self._by_root.get(resolved)
            if found is None:
                found = self._by_root[resolved] = Workspace(resolved, **self.options).start()
        return found

    def remove(self, root: str | Path) -> None:
        with self._lock:
            gone = self._by_root.pop(Path(root).expanduser().resolve(), None)
        if gone is not None:
            gone.close()

    def configure(self, **options) -> None:
        """New options for every workspace (the model's tokenizer once it has loaded)."""
        self.options.update(options)
        for ws in self:
            ws.retriever.count_tokens = self.options.get("count_tokens", approx_tokens)
            ws.retriever.budget = self.options.get("budget", ws.retriever.budget)
            ws.tokenizer = self.options.get("tokenizer")
            ws.on_table = self.options.get("on_table")

    def owner(self, path: str | Path | None) -> Workspace | None:
        """The innermost workspace holding `path`; a relative path (or none at all) belongs to
        the one workspace when there is exactly one."""
        spaces = list(self)
        if path is None or not Path(path).is_absolute():
            return spaces[0] if len(spaces) == 1 else None
        holding = [ws for ws in spaces if ws.contains(path)]
        return max(holding, key=lambda ws: len(ws.root.parts), default=None)

    def changed(self, path: str | Path, text: str | None = None) -> bool:
        ws = self.owner(path) if Path(path).is_absolute() else None
        return ws.changed(path, text) if ws is not None else False

    def touch(self, path: str | Path) -> None:
        ws = self.owner(path)
        if ws is not None:
            ws.touch(path)

    def augment(self, request: CompletionRequest) -> tuple[CompletionRequest, Retrieved]:
        """The request with its workspace's context before any it brought (`extra`), and the
        workspace as its `project` (the workspace drafter and import resolution use it); what
        was retrieved comes back beside it. A request outside every workspace is unchanged."""
        ws = self.owner(request.path)
        if ws is None:
            return request, Retrieved()
        got = ws.retrieve(request.prefix, request.suffix, request.path)
        return replace(request, extra=(*got.pieces, *request.extra),
                       project=request.project or str(ws.root)), got

    def close(self) -> None:
        with self._lock:
            spaces, self._by_root = list(self._by_root.values()), {}
        for ws in spaces:
            ws.close()
