"""The language server's stdio transport: messages framed by `Content-Length` headers.

What an editor (or anything else) writes can be wrong; none of it may stop the server or leave
it deaf:
- a `Content-Length` that is not a number, or past `MAX_MESSAGE`, is refused before anything is
  allocated, and the bytes after it are passed over up to the next header;
- a header line is read at most `MAX_HEADER_LINE` bytes at a time;
- a message without a `Content-Length`, or one whose length was short, loses that message only:
  a header is looked for anywhere in a line, so the stream finds its frames again;
- a body that is not JSON is answered with a parse error, a request whose params do not fit its
  method with an invalid-params error for its id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
from typing import BinaryIO

from pygls.exceptions import JsonRpcException, JsonRpcParseError
from pygls.io_ import StdoutWriter
from pygls.protocol import JsonRPCProtocol

log = logging.getLogger("tokenfill.lsp")

MAX_MESSAGE = 16 * 2**20   # bytes: a whole workspace file and then some
MAX_HEADER_LINE = 4096
LENGTH = re.compile(rb"content-length:[ \t]*([^\r\n]*)", re.IGNORECASE)


class Frames:
    """Splits a byte stream into message bodies (the framing only: no JSON here)."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def read_line(self) -> bytes:
        return self.stream.readline(MAX_HEADER_LINE)

    def read_body(self, length: int) -> bytes:
        return self.stream.read(length)

    def next_body(self) -> bytes | None:
        """The next message's body; None at the end of the stream. Blocking."""
        length: int | None = None
        while True:
            line = self.read_line()
            if not line:
                return None
            found = LENGTH.findall(line)
            if found:  # the last one: after garbage, a header may follow on the same line
                length = _length(found[-1])
                continue
            if line.strip():
                continue  # another header (Content-Type), or bytes being passed over
            if length is None:
                continue  # headers ended without a usable length: wait for the next one
            body = self.read_body(length)
            if len(body) < length:
                return None
            return body


def _length(value: bytes) -> int | None:
    text = value.strip()
    if not text.isdigit() or len(text) > 12 or int(text) > MAX_MESSAGE:
        log.error("refused a message header 'Content-Length: %s' (a length from 0 to %d is "
                  "needed); passing over what follows it", text[:40].decode("latin-1"),
                  MAX_MESSAGE)
        return None
    return int(text)


def handle(protocol: JsonRPCProtocol, body: bytes) -> None:
    """Hand one message body to the protocol; a body it cannot take is answered, not dropped."""
    try:
        raw = json.loads(body)
    except ValueError as e:
        log.error("a message that is not JSON: %s", e)
        protocol._send_response(None, error=JsonRpcParseError(f"not JSON: {e}").to_response_error())
        return
    try:
        message = protocol.structure_message(raw) if isinstance(raw, dict) else None
    except JsonRpcException as e:
        msg_id = raw.get("id")
        method = raw.get("method", "?")
        log.error("%s: its params do not fit the method", method)
        if msg_id is not None:  # a notification gets no answer, by the protocol's rules
            e.message = f"{method}: its params do not fit the method"
            protocol._send_response(msg_id, error=e.to_response_error())
        return
    if message is None or not hasattr(message, "jsonrpc"):
        protocol._send_response(None, error=JsonRpcParseError(
            "a message must be a JSON-RPC object").to_response_error())
        return
    protocol.handle_message(message)


async def serve(protocol: JsonRPCProtocol, stop: threading.Event,
                stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """Read messages from stdin until it ends (or `stop` is set); answers go to stdout."""
    protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
    frames = Frames(stdin or sys.stdin.buffer)
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        body = await loop.run_in_executor(None, frames.next_body)
        if body is None:
            break
        try:
            handle(protocol, body)
        except Exception:  # noqa: BLE001 - one message never takes the server down
            log.exception("a message could not be handled")
