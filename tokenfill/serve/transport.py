"""The HTTP connection: uvicorn's h11 protocol with a deadline for a request's line and headers.

uvicorn hands a request to the app once its headers are in, and waits for them for as long as
the client likes: a client that opens connections and sends a byte now and then would hold them
for ever. Here a connection that has begun a request, or has just opened, has `HEADER_TIMEOUT_S`
seconds to get the request's line and headers through; then it is closed. The body's own
deadline is the app's (`read_json`: 408).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("tokenfill.server")

HEADER_TIMEOUT_S = 10.0


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """The protocol class for `uvicorn.run(http=...)`, with this deadline for headers."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"timeout_s": seconds})


class HeaderTimeoutProtocol(H11Protocol):
    timeout_s = HEADER_TIMEOUT_S
    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if waiting:
            if self._headers_timer is None:
                self._arm()
        elif self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._headers_timer = self.loop.call_later(self.timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._headers_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed a connection from %s: no request headers within %g s",
                     "%s:%d" % self.client if self.client else "?", self.timeout_s)
            self.transport.close()
