"""A minimal language client over stdio that behaves as editors do: it asks for a feature only
when the server's `initialize` answer offers it (VS Code and Neovim's inline completion never ask
otherwise), and it can write raw bytes to test the framing."""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any


class NotOffered(Exception):
    """The server did not offer the capability: an editor would never send this request."""


class RawClient:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tokenfill", "lsp", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.ids = itertools.count(1)
        self.replies: dict[Any, queue.Queue] = {}
        self.orphans: queue.Queue = queue.Queue()  # replies with a null id
        self.capabilities: dict = {}
        self.log: list[bytes] = []  # the server's stderr, drained so that it never blocks on it
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif not line.strip():
                    break
            message = json.loads(out.read(length))
            if "method" not in message:  # a reply; one to a message without an id has none
                msg_id = message.get("id")
                target = self.orphans if msg_id is None else \
                    self.replies.setdefault(msg_id, queue.Queue())
                target.put(message)

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params: Any, timeout: float = 60) -> dict:
        """The whole reply: {"result": ...} or {"error": ...}."""
        msg_id = next(self.ids)
        self.replies.setdefault(msg_id, queue.Queue())
        self.send({"id": msg_id, "method": method, "params": params})
        return self.replies[msg_id].get(timeout=timeout)

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def initialize(self, options: dict) -> dict:
        reply = self.request("initialize", {"processId": None, "rootUri": None,
                                            "capabilities": {"textDocument": {
                                                "inlineCompletion": {}}},
                                            "initializationOptions": options})
        self.capabilities = reply["result"]["capabilities"]
        self.notify("initialized", {})
        return reply

    def open(self, uri: str, text: str) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text}})

    def inline_completion(self, uri: str, line: int, character: int) -> dict:
        if self.capabilities.get("inlineCompletionProvider") in (None, False):  # {} offers it
            raise NotOffered("textDocument/inlineCompletion")
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}})

    def close(self) -> str:
        """Shut the server down; what it wrote to stderr."""
        try:
            self.request("shutdown", None, timeout=10)
            self.notify("exit", None)
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a server that died is what the test then reports
            self.proc.kill()
            self.proc.wait(timeout=10)
        time.sleep(0.1)  # the last lines reach the drain
        return b"".join(self.log).decode(errors="replace")
