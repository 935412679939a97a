"""A deadline for request headers: uvicorn waits for them without limit, so a client that sends a header
line now and then (slowloris) holds its connection forever. This protocol answers 408 and closes the
connection when a request's headers are not complete ``timeout_s`` after its first byte (or after the
connection opened, for a client that sends nothing). Its writes go through a ``CoalescingTransport`` (one
socket write per response, coalescing.py). Built on uvicorn's httptools protocol (uvicorn 0.54)."""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pih2t_deploy.serving.coalescing import CoalescingTransport


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline of ``timeout_s`` seconds."""

    timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        body = json.dumps({"error": f"the request headers did not arrive within {self.timeout_s:g} s"}).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline for the first request's headers; writes from here on are coalesced (uvicorn's
        flow control keeps the real transport, which it gets before this wraps it)."""
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._arm()

    def on_message_begin(self) -> None:
        """A request's first bytes: its headers are due ``timeout_s`` from now (unless already timed)."""
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        """Headers in time: the body has its own deadline (BodyLimitMiddleware)."""
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing to time any more."""
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to give uvicorn.Config(http=...) for a header deadline of ``timeout_s``."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"timeout_s": timeout_s})
