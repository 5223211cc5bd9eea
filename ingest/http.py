"""The HTTP connection: uvicorn's httptools protocol with the limits it does not have.

uvicorn bounds neither a request's head nor how long a client may take to send it or its body, so one
client streaming a never-ending header, or a thousand sending a byte a second, holds the server. This
protocol answers and closes:
  * 431 when the request line and headers pass `max_header_bytes`;
  * 408 when they are not complete `header_timeout_seconds` after the connection opened or the last
    response went out (an idle connection that sends nothing is closed the same way);
  * 408 when the body is not complete `body_timeout_seconds` after the head (the app sees the client
    gone, as with any disconnect).
Keep-alive idleness and the number of open connections are uvicorn's own settings (timeout_keep_alive,
limit_concurrency: past it, 503), set from the same [web] section by `aipt web`.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from aipt.settings import Web


def _answer(status: int, message: str) -> bytes:
    body = message.encode()
    return b"".join([
        STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body,
    ])  # fmt: skip


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a head size limit and head and body read timeouts (see the module docstring)."""

    limits: Web  # set by protocol_for()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._next_request = False
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self.limits.header_timeout_seconds, "request head not received in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"request head over {self.limits.max_header_bytes} bytes")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._next_request:  # its first byte on a kept-alive connection: the head has its time from now
            self._next_request = False
            self._arm(self.limits.header_timeout_seconds, "request head not received in time")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout_seconds, "request body not received in time")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # Idle until the next request's first byte is uvicorn's keep-alive timeout; from that byte on,
            # the head timeout covers a request that starts and then trickles.
            self._in_head, self._head_bytes, self._next_request = True, 0, True

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._refuse, 408, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_answer(status, message))
        self.logger.warning("connection closed: %s (%d)", message, status)
        self.transport.close()


def protocol_for(limits: Web) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn builds per connection, with these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
