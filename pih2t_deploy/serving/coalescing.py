"""One socket write per response instead of two: uvicorn writes a response's head when the application sends
``http.response.start`` and its body when it sends ``http.response.body``, each a send() of its own and, on
the wire, a TCP segment of its own. ``CoalescingTransport`` holds what is written during one turn of the
event loop and hands it to the real transport at the start of the next turn, in order, as one write.

On 2 vCPUs with perf_analyzer on the same cores, this took pih2t-serve from 1951 to 2217 requests/s in one
process and from 2661 to 3510 with ``--workers 2`` (interleaved A/B rounds, docs/performance.md, run 7):
both the server and the client handle half the segments.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps ``transport``: ``write`` and ``writelines`` are gathered and flushed once per loop turn (in
    order); ``close`` and ``write_eof`` flush first; ``abort`` drops what is pending; anything else is the
    wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` after what was written before it, at the start of the next loop turn."""
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        """``write`` of each chunk."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Hand everything pending to the transport as one write (dropped if it is closing: the peer left)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Flush, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Flush, then end the writing side."""
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        """Close at once, dropping what is pending."""
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
