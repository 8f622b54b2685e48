"""The language server's framing: whatever a client writes, the frames after it are found."""

from __future__ import annotations

import io
import json

from tokenfill.serve.lsp_io import MAX_MESSAGE, Frames


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def bodies(data: bytes) -> list[dict]:
    frames, out = Frames(io.BytesIO(data)), []
    while (body := frames.next_body()) is not None:
        try:
            out.append(json.loads(body))
        except ValueError:
            out.append({"not json": body.decode(errors="replace")})
    return out


GOOD = {"jsonrpc": "2.0", "id": 7, "method": "shutdown"}


def test_plain_frames_with_other_headers():
    data = frame({"a": 1}) + b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" \
        + frame({"b": 2})
    assert bodies(data) == [{"a": 1}, {"b": 2}]


def test_an_absurd_length_is_refused_and_the_next_frame_found():
    data = b"Content-Length: 99999999999999999999\r\n\r\n" + b'{"x": 1}' + frame(GOOD)
    assert bodies(data) == [GOOD]
    too_big = b"Content-Length: %d\r\n\r\n{}" % (MAX_MESSAGE + 1)
    assert bodies(too_big + frame(GOOD)) == [GOOD]
    assert bodies(b"Content-Length: -5\r\n\r\n{}" + frame(GOOD)) == [GOOD]


def test_a_message_without_a_length_loses_only_itself():
    assert bodies(b"Content-Type: x\r\n\r\n" + b'{"lost": 1}' + frame(GOOD)) == [GOOD]


def test_a_short_length_loses_only_its_own_message():
    body = json.dumps({"id": 1, "method": "x"}).encode()
    data = b"Content-Length: %d\r\n\r\n" % (len(body) - 3) + body + frame(GOOD)
    got = bodies(data)
    assert got[-1] == GOOD and len(got) == 2 and "not json" in got[0]


def test_a_stream_that_ends_mid_body_ends_cleanly():
    assert bodies(b"Content-Length: 50\r\n\r\n{\"a\"") == []
