"""gRPC calls handed between workers (serving/handoff.py): the policy on shared counts, the frames over real
Unix sockets on a real event loop, every way a peer can fail to answer, and, through a real gRPC server over a
fake classifier, that a handed-off call gets the answer and the errors the receiving worker would give."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pih2t_deploy.serving.dataplane import DataPlane
from pih2t_deploy.serving.grpc_service import GrpcLimits, InferenceServicer, start_grpc_server
from pih2t_deploy.serving.handoff import ANSWER, FAILED, Board, Handoff, failure, read_failure
from pih2t_deploy.serving.process import free_port
from pih2t_deploy.serving.settings import ServeSettings
from tests.fakes import FakeClassifier


def board(*counts: int) -> Board:
    shared = multiprocessing.get_context("spawn").RawArray("i", len(counts))
    shared[:] = list(counts)
    return Board(shared)


def handoffs(tmp_path, shared: Board, max_payload: int = 1 << 20, timeout_s: float = 10.0) -> list[Handoff]:
    return [Handoff(shared, slot, tmp_path, max_payload, timeout_s) for slot in range(len(shared))]


@pytest.mark.parametrize(
    ("counts", "expected"),
    [((0, 0, 0), None), ((1, 0, 0), None), ((2, 0, 1), 1), ((3, 2, 1), 2), ((4, 3, 3), None), ((2, 1, 0), 2)],
)
def test_a_call_goes_to_the_least_busy_peer_only_when_it_has_two_calls_fewer(tmp_path, counts, expected):
    assert handoffs(tmp_path, board(*counts))[0].least_busy_peer() == expected


def test_a_peer_that_could_not_be_reached_is_skipped_until_its_retry_time(tmp_path):
    first = handoffs(tmp_path, board(5, 0, 1))[0]
    first.peers[1].down_until = time.monotonic() + 60
    assert first.least_busy_peer() == 2
    first.peers[2].down_until = time.monotonic() + 60
    assert first.least_busy_peer() is None


def test_working_counts_a_call_until_it_ends_even_when_it_fails():
    shared = board(0, 0)
    with shared.working(1):
        assert list(shared.counts) == [0, 1]
    with pytest.raises(RuntimeError), shared.working(1):
        raise RuntimeError
    assert list(shared.counts) == [0, 0]


async def peer_answers(payload: bytes) -> tuple[int, bytes]:
    """A stand-in worker: reverses 'ok' payloads, is shutting down for 'busy', refuses 'bad', breaks on
    'boom', and never answers 'hang'."""
    if payload.startswith(b"ok"):
        return ANSWER, payload[::-1]
    if payload == b"busy":
        return failure(14, "the server is shutting down")
    if payload == b"bad":
        return failure(3, "unknown input 'x'")
    if payload == b"hang":
        await asyncio.Event().wait()
    raise KeyError(payload)


async def no_calls(path: str, payload: bytes) -> tuple[int, bytes]:
    """Peers hand each other only INFER frames; a CALL frame (the native front end's) must not arrive here."""
    raise AssertionError(f"a CALL frame for {path} between peers")


def test_answers_and_refusals_come_back_and_a_peer_shutting_down_leaves_the_call_here(tmp_path):
    async def scenario():
        sender, receiver = handoffs(tmp_path, board(5, 0))
        await receiver.listen(peer_answers, no_calls)
        try:
            answers = await asyncio.gather(*(sender.relay(lambda i=i: b"ok-%d" % i) for i in range(20)))
            assert answers == [(ANSWER, (b"ok-%d" % i)[::-1]) for i in range(20)]  # each call its own answer
            kind, body = await sender.relay(lambda: b"bad")
            assert kind == FAILED and read_failure(body) == (3, "unknown input 'x'")
            assert await sender.relay(lambda: b"busy") is None
            kind, body = await sender.relay(lambda: b"boom")
            assert kind == FAILED and read_failure(body) == (13, "internal error: KeyError")
            assert sender.peers[1].down_until == 0.0  # every one of these was answered
        finally:
            await sender.close()
            await receiver.close()

    asyncio.run(scenario())


def test_a_peer_that_is_not_listening_leaves_the_call_here_and_is_not_tried_again_at_once(tmp_path):
    async def scenario():
        sender = handoffs(tmp_path, board(5, 0))[0]
        assert await sender.relay(lambda: b"ok") is None
        assert sender.peers[1].down_until > time.monotonic()
        assert sender.least_busy_peer() is None

    asyncio.run(scenario())


def test_a_peer_that_does_not_answer_in_time_or_refuses_an_oversized_frame_leaves_the_call_here(tmp_path):
    async def scenario():
        sender, receiver = handoffs(tmp_path, board(5, 0), max_payload=64, timeout_s=0.3)
        await receiver.listen(peer_answers, no_calls)
        try:
            started = time.monotonic()
            assert await sender.relay(lambda: b"hang") is None
            assert 0.3 <= time.monotonic() - started < 5
            sender.peers[1].down_until = 0.0
            assert await sender.relay(lambda: b"ok" + b"x" * 100) is None  # the peer closes the connection
            sender.peers[1].down_until = 0.0
            assert await sender.relay(lambda: b"ok-again") == (ANSWER, b"niaga-ko")  # a new connection
        finally:
            await sender.close()
            await receiver.close()

    asyncio.run(scenario())


class CountedFake(FakeClassifier):
    """Notes the shared counts each time it runs a batch."""

    def __init__(self, shared: Board) -> None:
        super().__init__()
        self.shared, self.seen = shared, []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(list(self.shared.counts))
        return super().predict(batch)


def request(name: str = "input") -> service_pb2.ModelInferRequest:
    batch = FakeClassifier.voting_for([2])
    message = service_pb2.ModelInferRequest(model_name="fake", id="r-1")
    message.inputs.add(name=name, datatype="FP32", shape=list(batch.shape))
    message.raw_input_contents.append(batch.tobytes())
    return message


def test_a_handed_off_grpc_call_gets_the_answer_and_the_error_the_receiving_worker_gives(tmp_path):
    """Two workers in one process, each a DataPlane over its own fake classifier; worker 0 serves gRPC on
    127.0.0.1 and counts itself busy, so it hands every call to worker 1 until worker 1 shuts down."""

    async def scenario():
        shared = board(0, 0)
        first, second = handoffs(tmp_path, shared)
        classifiers = [CountedFake(shared), CountedFake(shared)]
        planes = [DataPlane(lambda c=c: c, ServeSettings(max_wait_ms=0)) for c in classifiers]
        for plane, classifier in zip(planes, classifiers, strict=True):
            await plane.start()
            classifier.calls.clear()  # the warm-up's
            classifier.seen.clear()
        servicer = InferenceServicer(planes[1], second)
        await second.listen(servicer.answer_handed, servicer.answer_call)
        address = f"127.0.0.1:{free_port()}"
        server = await start_grpc_server(planes[0], address, GrpcLimits(1 << 20), first)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                local = await stub.ModelInfer(request())  # counts equal: worker 0 answers
                with pytest.raises(grpc.aio.AioRpcError) as refused_here:
                    await stub.ModelInfer(request("nope"))
                assert classifiers[0].calls == [1] and classifiers[1].calls == []

                shared.counts[0] = 10
                handed = await stub.ModelInfer(request())
                with pytest.raises(grpc.aio.AioRpcError) as refused_there:
                    await stub.ModelInfer(request("nope"))
                assert classifiers[0].calls == [1] and classifiers[1].calls == [1]
                assert handed == local and handed.id == "r-1"
                logits = np.frombuffer(handed.raw_output_contents[0], np.float32).reshape(1, 3)
                np.testing.assert_allclose(logits, FakeClassifier.expected(FakeClassifier.voting_for([2])), 1e-6)
                assert refused_there.value.code() == refused_here.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refused_there.value.details() == refused_here.value.details()
                assert "unknown input 'nope'" in refused_there.value.details()
                assert planes[0].metrics.handoffs._value.get() == 2

                await planes.pop().stop()  # worker 1 shuts down, answers Unavailable: worker 0 takes the call back
                assert await stub.ModelInfer(request()) == local
                assert classifiers[0].calls == [1, 1] and classifiers[1].calls == [1]
                # each call counted on the worker that worked on it, while it did
                assert classifiers[0].seen == [[1, 0], [11, 0]] and classifiers[1].seen == [[10, 1]]
                assert list(shared.counts) == [10, 0]
        finally:
            await server.stop(grace=None)
            await first.close()
            await second.close()
            for plane in planes:
                await plane.stop()

    asyncio.run(scenario())
