"""CoalescingTransport: what one loop turn writes reaches the socket as one write, in order; close flushes
first; abort drops; nothing is written to a transport that is closing. Checked on a real event loop and a real
TCP connection whose transport records each write it is handed (RecordingProtocol's peer reads the bytes back);
end to end, the pih2t-serve tests (test_serving_lifecycle, test_serve_workers, test_grpc) run through it."""

from __future__ import annotations

import asyncio

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


async def connected() -> tuple[CoalescingTransport, list[bytes], Reader, asyncio.Server]:
    """A CoalescingTransport over a real client transport whose writes are recorded, and the server-side peer."""
    loop = asyncio.get_running_loop()
    reader_made = loop.create_future()
    server = await loop.create_server(lambda: reader_made.set_result(Reader()) or reader_made.result(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    handed: list[bytes] = []
    real_write = transport.write
    transport.write = lambda data: (handed.append(bytes(data)), real_write(data))[1]  # type: ignore[method-assign]
    return CoalescingTransport(transport, loop), handed, await reader_made, server


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def test_writes_of_one_turn_reach_the_socket_as_one_write_in_order():
    async def scenario() -> None:
        wrapped, handed, reader, server = await connected()
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
        wrapped.close()
        server.close()

    asyncio.run(scenario())


def test_close_flushes_first_and_abort_drops_what_is_pending():
    async def scenario() -> None:
        wrapped, handed, reader, server = await connected()
        wrapped.write(b"last words")
        wrapped.close()  # in the same turn as the write
        await asyncio.wait_for(reader.closed, 5)
        assert handed == [b"last words"] and bytes(reader.received) == b"last words"

        wrapped, handed, reader, _ = await connected()
        wrapped.write(b"never sent")
        wrapped.abort()
        await asyncio.wait_for(reader.closed, 5)
        await asyncio.sleep(0)  # the flush scheduled by the write runs and finds nothing
        assert handed == [] and bytes(reader.received) == b""
        server.close()

    asyncio.run(scenario())


def test_nothing_is_written_to_a_transport_that_is_closing():
    async def scenario() -> None:
        wrapped, handed, _, server = await connected()
        wrapped.write(b"too late")
        wrapped._transport.close()  # the peer went away (uvicorn closes the real transport on connection loss)
        await asyncio.sleep(0)
        assert handed == [] and wrapped.is_closing()
        server.close()

    asyncio.run(scenario())
