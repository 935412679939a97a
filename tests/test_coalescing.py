"""CoalescingTransport: what one loop turn writes reaches the socket as one write, in order; close flushes
first; abort drops; nothing is written to a transport that is closing. Checked on a real event loop and a real
TCP connection: the client transport's own ``write`` is wrapped to record what it is handed, and the peer
(``Reader``) reads the bytes back. End to end, the pih2t-serve tests (test_serving_lifecycle,
test_serve_workers, test_grpc) run through it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pih2t_deploy.serving.coalescing import CoalescingTransport


class Reader(asyncio.Protocol):
    """The peer: keeps every byte it receives."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


@contextlib.asynccontextmanager
async def connection() -> AsyncIterator[tuple[CoalescingTransport, list[bytes], Reader]]:
    """A CoalescingTransport over a real client transport, the writes that transport is handed, and the
    server-side peer; the listening server is closed on exit."""
    loop = asyncio.get_running_loop()
    reader = Reader()
    server = await loop.create_server(lambda: reader, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        handed: list[bytes] = []
        real_write = transport.write
        transport.write = lambda data: (handed.append(bytes(data)), real_write(data))[1]  # type: ignore[method-assign]
        yield CoalescingTransport(transport, loop), handed, reader
        transport.close()
    finally:
        server.close()


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def test_writes_of_one_turn_reach_the_socket_as_one_write_in_order():
    async def scenario() -> None:
        async with connection() as (wrapped, handed, reader):
            wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            wrapped.write(b"hello")
            assert handed == []  # nothing yet: the flush comes at the next turn
            await asyncio.sleep(0)
            assert handed == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
            wrapped.writelines([b"a", bytearray(b"b")])
            wrapped.write(memoryview(b"c"))
            await asyncio.sleep(0)
            assert handed[1:] == [b"abc"]
            expected = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloabc"
            await until(lambda: len(reader.received) >= len(expected))
            assert bytes(reader.received) == expected

    asyncio.run(scenario())


def test_close_flushes_first_and_abort_drops_what_is_pending():
    async def scenario() -> None:
        async with connection() as (wrapped, handed, reader):
            wrapped.write(b"last words")
            wrapped.close()  # in the same turn as the write
            await asyncio.wait_for(reader.closed, 5)
            assert handed == [b"last words"] and bytes(reader.received) == b"last words"
        async with connection() as (wrapped, handed, reader):
            wrapped.write(b"never sent")
            wrapped.abort()
            await asyncio.wait_for(reader.closed, 5)
            await asyncio.sleep(0)  # the flush scheduled by the write runs and finds nothing
            assert handed == [] and bytes(reader.received) == b""

    asyncio.run(scenario())


def test_nothing_is_written_to_a_transport_that_is_closing():
    async def scenario() -> None:
        async with connection() as (wrapped, handed, _):
            wrapped.write(b"too late")
            wrapped._transport.close()  # the peer went away (uvicorn closes the real transport on connection loss)
            await asyncio.sleep(0)
            assert handed == [] and wrapped.is_closing()

    asyncio.run(scenario())
