"""gRPC inference calls handed between the workers of ``pih2t-serve --workers N``.

The kernel spreads connections over the workers' gRPC sockets, not calls. A client that holds few HTTP/2
connections (a service with one channel; perf_analyzer's 16 request contexts share 3) puts every call on one
or two workers while the others idle. So each worker also listens on a Unix socket in a private folder (mode
0700, made by the parent), and a worker that receives an inference call while it is working on more calls than
a peer sends the call's serialized request to the least busy peer and relays the serialized answer.

Calls being worked on are counted in an array the parent shares with every worker, one slot per worker. A peer
that cannot be reached is left alone for ``RETRY_S`` seconds, and a call it does not answer (connection lost,
no answer within the call's timeout, or Unavailable because it is still loading or shutting down) is worked on
by the worker that received it, so a hand-off never turns a call the receiving worker could answer into an
error.

Frames, both ways: a 4-byte payload length, an 8-byte call id, a 1-byte kind, the payload. A request is
``ModelInferRequest`` bytes (kind ``INFER``, from a peer worker) or any method's call (kind ``CALL``, from the
native gRPC front end, ``native/grpc_front``: a 1-byte length, the method's path, the request bytes); an answer
is the response bytes (kind ``ANSWER``) or a gRPC status code (1 byte) and a UTF-8 message (kind ``FAILED``).
Frames longer than the gRPC message limit close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IQB")  # payload length, call id, kind
ANSWER, FAILED = 0, 1  # kinds of answers
INFER, CALL = 0, 2  # kinds of requests
INTERNAL, UNAVAILABLE = 13, 14  # gRPC's status codes: the server's own failure; a peer loading or shutting down
MARGIN = 1  # hand a call off only to a peer working on at least this many calls fewer, plus one
RETRY_S = 1.0  # a peer that could not be reached is not tried again for this long

Answerer = Callable[[bytes], Awaitable[tuple[int, bytes]]]  # ModelInferRequest bytes -> (kind, payload)
CallAnswerer = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]  # method path, request bytes -> (kind, payload)


def socket_path(folder: Path, slot: int) -> Path:
    """Where worker ``slot`` listens for calls handed to it."""
    return folder / f"worker-{slot}.sock"


def failure(code: int, message: str) -> tuple[int, bytes]:
    """A FAILED answer: gRPC status ``code`` and ``message``."""
    return FAILED, bytes([code]) + message.encode()


def read_failure(body: bytes) -> tuple[int, str]:
    """The gRPC status code and message of a FAILED answer."""
    return body[0], body[1:].decode(errors="replace")


class _Frames(asyncio.Protocol):
    """A connection carrying frames; ``frame(call id, kind, payload)`` is called for each one received."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            length, call, kind = HEADER.unpack_from(self.buffer)
            if length > self.max_payload:
                log.warning("hand-off frame of %d bytes over the limit of %d; closing", length, self.max_payload)
                assert self.transport is not None
                self.transport.close()
                self.buffer.clear()
                return
            end = HEADER.size + length
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[HEADER.size : end])
            del self.buffer[:end]
            self.frame(call, kind, payload)

    def send(self, call: int, kind: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.writelines([HEADER.pack(len(payload), call, kind), payload])

    def frame(self, call: int, kind: int, payload: bytes) -> None:
        raise NotImplementedError


class _Serving(_Frames):
    """A connection to this worker from a peer or the native front end: each request answered in its own task,
    an INFER frame by ``answer``, a CALL frame by ``answer_call``."""

    def __init__(self, max_payload: int, answer: Answerer, answer_call: CallAnswerer) -> None:
        super().__init__(max_payload)
        self.answer, self.answer_call = answer, answer_call
        self.tasks: set[asyncio.Task] = set()

    def frame(self, call: int, kind: int, payload: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(call, kind, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _answering(self, kind: int, payload: bytes) -> Awaitable[tuple[int, bytes]]:
        if kind != CALL:
            return self.answer(payload)
        end = 1 + payload[0] if payload else 0
        return self.answer_call(payload[1:end].decode(errors="replace"), payload[end:])

    async def _reply(self, call: int, kind: int, payload: bytes) -> None:
        try:
            kind, body = await self._answering(kind, payload)
        except Exception as exc:  # the last resort a gRPC call has too: logged, answered INTERNAL
            log.exception("a handed-off call failed")
            kind, body = failure(INTERNAL, f"internal error: {type(exc).__name__}")
        if self.transport is not None and not self.transport.is_closing():
            self.send(call, kind, body)


class _Calling(_Frames):
    """This worker's connection to a peer: calls in progress by id, each a future of (kind, payload)."""

    def __init__(self, max_payload: int) -> None:
        super().__init__(max_payload)
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.ids = itertools.count()

    def call(self, payload: bytes) -> asyncio.Future[tuple[int, bytes]]:
        call = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[call] = future
        future.add_done_callback(lambda _f: self.pending.pop(call, None))
        self.send(call, INFER, payload)
        return future

    def frame(self, call: int, kind: int, payload: bytes) -> None:
        future = self.pending.pop(call, None)
        if future is not None and not future.done():  # a call its client cancelled is answered into the void
            future.set_result((kind, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the peer worker closed the hand-off connection"))
        self.pending.clear()
        self.transport = None


async def listen_for_calls(
    path: Path, max_payload: int, answer: Answerer, answer_call: CallAnswerer
) -> asyncio.AbstractServer:
    """A server on the Unix socket ``path`` (a stale socket file there is replaced) answering INFER frames with
    ``answer`` and CALL frames with ``answer_call``; OSError when it cannot listen there."""
    path.unlink(missing_ok=True)  # the socket of the worker this one replaces
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _Serving(max_payload, answer, answer_call), str(path))


@dataclass
class _Peer:
    path: Path
    calling: _Calling | None = None
    down_until: float = 0.0
    connecting: asyncio.Lock | None = None


class Board:
    """Calls being worked on, one slot per worker, in memory every worker shares (a ``multiprocessing``
    RawArray of ints made by the parent). Only a worker's own event loop writes its slot (and the parent, which
    zeroes it before starting a replacement), so no lock is needed; a reader may see a count one call old, which
    only makes a hand-off decision a call late."""

    def __init__(self, counts: Any) -> None:
        self.counts = counts

    def __len__(self) -> int:
        return len(self.counts)

    @contextlib.contextmanager
    def working(self, slot: int) -> Iterator[None]:
        """Count a call on ``slot`` while the block runs."""
        self.counts[slot] += 1
        try:
            yield
        finally:
            self.counts[slot] -= 1


class Handoff:
    """One worker's side: its listener for calls handed to it, and its connections to its peers."""

    def __init__(self, board: Board, slot: int, folder: Path, max_payload: int, timeout_s: float) -> None:
        self.board, self.slot, self.folder = board, slot, folder
        self.max_payload, self.timeout_s = max_payload, timeout_s
        self.peers = {i: _Peer(socket_path(folder, i)) for i in range(len(board)) if i != slot}
        self.server: asyncio.AbstractServer | None = None

    async def listen(self, answer: Answerer, answer_call: CallAnswerer) -> None:
        """Take calls handed to this worker, each answered by ``answer`` (request bytes -> (kind, payload))."""
        path = socket_path(self.folder, self.slot)
        try:
            self.server = await listen_for_calls(path, self.max_payload, answer, answer_call)
        except OSError as exc:  # e.g. a TMPDIR so deep that the path exceeds a socket address's 107 bytes
            log.warning("cannot listen at %s (%s): this worker takes no handed-off gRPC calls", path, exc)

    async def close(self) -> None:
        """Stop listening and close the connections to the peers."""
        if self.server is not None:
            self.server.close()
        for peer in self.peers.values():
            if peer.calling is not None and peer.calling.transport is not None:
                peer.calling.transport.close()

    def working(self) -> contextlib.AbstractContextManager[None]:
        """Count a call as worked on by this worker while the block runs."""
        return self.board.working(self.slot)

    def least_busy_peer(self) -> int | None:
        """The peer working on the fewest calls, if that is at least MARGIN + 1 fewer than this worker's."""
        counts, now = self.board.counts, time.monotonic()
        best, fewest = None, counts[self.slot] - MARGIN
        for index, peer in self.peers.items():
            if counts[index] < fewest and peer.down_until <= now:
                best, fewest = index, counts[index]
        return best

    async def relay(self, request: Callable[[], bytes]) -> tuple[int, bytes] | None:
        """The answer of a less busy peer to the serialized ``request()``, or None when no peer is less busy or
        the peer did not answer (the caller then works on the call itself)."""
        index = self.least_busy_peer()
        if index is None:
            return None
        peer = self.peers[index]
        try:
            calling = await self._connected(peer)
            kind, body = await asyncio.wait_for(calling.call(request()), self.timeout_s)
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.warning("worker %d did not answer a handed-off call (%s); answering it here", index, exc)
            peer.down_until = time.monotonic() + RETRY_S
            return None
        if kind == FAILED and read_failure(body)[0] == UNAVAILABLE:
            return None  # still loading, or shutting down: this worker answers instead
        return kind, body

    async def _connected(self, peer: _Peer) -> _Calling:
        if peer.calling is not None and peer.calling.transport is not None:
            return peer.calling
        if peer.connecting is None:
            peer.connecting = asyncio.Lock()
        async with peer.connecting:
            if peer.calling is None or peer.calling.transport is None:
                loop = asyncio.get_running_loop()
                _, peer.calling = await loop.create_unix_connection(lambda: _Calling(self.max_payload), str(peer.path))
        return peer.calling
