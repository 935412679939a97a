"""The native gRPC front end (``pih2t-grpc-front``, built by ``make test``): the real program on 127.0.0.1,
first in front of a data plane over a fake classifier in this process (its limits, its errors, a worker that is
not there yet), then in front of real ``pih2t-serve --workers 2 --grpc-front native`` workers (calls on one
connection spread over both, a killed worker or front end replaced, a clean stop)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from pih2t_deploy.errors import ConfigError, UserError
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.dataplane import DataPlane
from pih2t_deploy.serving.front import FrontProcess, find_front
from pih2t_deploy.serving.grpc_service import GrpcLimits, serve_front_calls
from pih2t_deploy.serving.process import free_port, start_rest_server, wait_ready
from pih2t_deploy.serving.settings import ServeSettings
from tests import images
from tests.fakes import FakeClassifier
from tests.helpers import run_cli
from tests.test_grpc_limits import GatedFake, infer_request
from tests.test_serve_workers import _children

INFER = "/inference.GRPCInferenceService/ModelInfer"


async def front_and(
    scenario, classifier, *, max_message_bytes: int = 1 << 20, max_in_flight: int = 1000, call_timeout_s: float = 60
):
    """Run ``scenario(stub, channel, listen)`` against the real front end handing calls to one worker socket,
    which a data plane over ``classifier`` in this process serves once ``listen()`` is awaited."""
    folder = Path(tempfile.mkdtemp(prefix="pih2t-front-"))  # short: a socket path has at most 107 bytes
    path = folder / "worker-0.sock"
    address = f"127.0.0.1:{free_port()}"
    limits = GrpcLimits(max_message_bytes)
    options = limits.options()
    front = FrontProcess(find_front(), address, [path], max_message_bytes, max_in_flight, options, call_timeout_s)
    await asyncio.to_thread(front.start)
    plane = DataPlane(lambda: classifier, ServeSettings(max_batch=1, max_wait_ms=0))
    await plane.start()
    servers = []

    async def listen() -> None:
        servers.append(await serve_front_calls(plane, path, max_message_bytes))

    try:
        async with grpc.aio.insecure_channel(address) as channel:
            return await scenario(service_pb2_grpc.GRPCInferenceServiceStub(channel), channel, listen)
    finally:
        for server in servers:
            server.close()
        await plane.stop()
        await asyncio.to_thread(front.stop)
        path.unlink(missing_ok=True)
        folder.rmdir()


async def refusal(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    raise AssertionError("the call was answered")


async def _drained(stream) -> None:
    async for _ in stream:
        pass


def test_calls_beyond_the_in_flight_limit_are_refused_and_the_others_answered():
    async def scenario(stub, _channel, listen):
        await listen()
        classifier.holding = True
        held = [asyncio.ensure_future(stub.ModelInfer(infer_request())) for _ in range(2)]
        await asyncio.sleep(0.5)  # both are in the worker, waiting for the gate
        refused = await refusal(stub.ModelInfer(infer_request()))
        classifier.gate.set()
        return refused, await asyncio.gather(*held)

    classifier = GatedFake()
    (code, details), answers = asyncio.run(front_and(scenario, classifier, max_in_flight=2))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many calls in progress" in details
    expected = FakeClassifier.expected(np.zeros((1, 1, 4, 4)))
    for answer in answers:
        np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], np.float32), expected.ravel())


def test_a_call_a_hung_worker_leaves_unanswered_gets_deadline_exceeded_and_later_calls_are_answered():
    async def scenario(stub, _channel, listen):
        await listen()
        classifier.holding = True
        started = time.monotonic()
        refused = await refusal(stub.ModelInfer(infer_request()))
        waited = time.monotonic() - started
        classifier.holding = False
        classifier.gate.set()
        return refused, waited, await stub.ModelInfer(infer_request())

    classifier = GatedFake()
    (code, details), waited, answer = asyncio.run(front_and(scenario, classifier, call_timeout_s=1.0))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "the worker gave no answer in time"
    assert waited >= 1.0  # not before the deadline; without it the gate's 10 s end would answer the call
    expected = FakeClassifier.expected(np.zeros((1, 1, 4, 4)))
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], np.float32), expected.ravel())


def test_oversized_malformed_streaming_and_unknown_calls_get_clear_statuses_and_the_front_keeps_answering():
    async def scenario(stub, channel, listen):
        await listen()
        big = infer_request()
        big.raw_input_contents[0] = b"\0" * 300_000
        raw = channel.unary_unary(INFER)  # no serializer: the bytes go as they are
        other = channel.unary_unary("/other.Service/Method")
        streaming = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        found = [
            await refusal(stub.ModelInfer(big)),
            await refusal(raw(b"\xff\xff\xff not a protobuf")),
            await refusal(other(b"")),
            await refusal(_drained(streaming(iter([infer_request().SerializeToString()])))),
            await refusal(stub.ModelInfer(infer_request(model="m" * 100_000))),
        ]
        answer = await stub.ModelInfer(infer_request())
        return found, answer

    found, answer = asyncio.run(front_and(scenario, FakeClassifier(), max_message_bytes=200_000))
    (too_big, _), (junk, junk_text), (other, other_text), (stream, _), (unknown, unknown_text) = found
    assert too_big == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert junk == grpc.StatusCode.INVALID_ARGUMENT and junk_text == "the request is not a ModelInferRequest"
    assert other == grpc.StatusCode.UNIMPLEMENTED and "/other.Service/Method" in other_text
    assert stream == grpc.StatusCode.UNIMPLEMENTED
    assert unknown == grpc.StatusCode.NOT_FOUND and len(unknown_text) < 300 and unknown_text.startswith("unknown model")
    expected = FakeClassifier.expected(np.zeros((1, 1, 4, 4)))
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], np.float32), expected.ravel())


def test_a_worker_not_listening_yet_gets_unavailable_then_its_calls_once_it_listens():
    async def scenario(stub, _channel, listen):
        before = await refusal(stub.ServerReady(service_pb2.ServerReadyRequest()))
        await listen()
        deadline = time.monotonic() + 10  # the front end tries an unreachable worker again after 1 s
        while True:
            try:
                return before, await stub.ServerReady(service_pb2.ServerReadyRequest())
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                await asyncio.sleep(0.2)

    (code, details), ready = asyncio.run(front_and(scenario, FakeClassifier()))
    assert code == grpc.StatusCode.UNAVAILABLE and details == "no worker is ready to answer; retry shortly"
    assert ready.ready


def test_a_port_in_use_or_a_bad_option_stops_the_program_with_one_line():
    with socket.socket() as taken:  # held without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        front = FrontProcess(
            find_front(), f"127.0.0.1:{taken.getsockname()[1]}", [Path("/nonexistent.sock")], 1000, 10, []
        )
        with pytest.raises(UserError, match=r"did not start on 127\.0\.0\.1:\d+: pih2t-grpc-front: cannot listen"):
            front.start()
    done = subprocess.run(
        [str(find_front()), "--listen", "127.0.0.1:0", "--max-in-flight", "many"], capture_output=True, text=True
    )
    assert (
        done.returncode == 2 and done.stderr == "pih2t-grpc-front: --max-in-flight needs a whole number, got 'many'\n"
    )


def test_the_cli_needs_a_grpc_port_and_a_built_program_for_the_native_front_end(digits_artifact, tmp_path):
    done = run_cli("serve", "--model", str(digits_artifact[1]), "--grpc-port", "0", "--grpc-front", "native")
    assert done.returncode == 2 and "--grpc-front native serves gRPC: give it --grpc-port too" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    python = tmp_path / "bin" / "python"  # a Python with no pih2t-grpc-front beside it, none on PATH
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.executable", str(python))
        patch.setenv("PATH", str(python.parent))
        with pytest.raises(ConfigError, match="build it with `make grpc-front`"):
            find_front()


def _workers_connected_to_the_front(workers: set[int]) -> set[int]:
    """Those of ``workers`` holding an accepted connection on their front-end socket (a call went to them)."""
    connected = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[5] == "03" and re.search(r"/worker-\d+\.sock$", fields[7]):  # 03: connected
            connected.add(f"socket:[{fields[6]}]")
    holding = set()
    for pid in workers:
        with contextlib.suppress(OSError):
            if any(str(fd.readlink()) in connected for fd in Path(f"/proc/{pid}/fd").iterdir()):
                holding.add(pid)
    return holding


def _infer_all(address: str, model: str, blobs: list[bytes]) -> list[tuple[int, object, object]]:
    """Every blob sent at once on one channel (one HTTP/2 connection); (index, result, error) per call."""
    answers: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(address)
    try:
        for index, blob in enumerate(blobs):
            sent = triton_grpc.InferInput("image", [1, 1], "BYTES")
            sent.set_data_from_numpy(np.array([[blob]], dtype=object))
            done = lambda result, error, index=index: answers.put((index, result, error))  # noqa: E731
            client.async_infer(model, [sent], done)
        return sorted((answers.get(timeout=60) for _ in blobs), key=lambda answer: answer[0])
    finally:
        client.close()


def _errors(answers: list[tuple[int, object, object]]) -> list[object]:
    return [error for _, _, error in answers if error is not None]


def _front_pid(server_pid: int) -> int | None:
    """The pih2t-grpc-front child of ``server_pid``, if one runs."""
    program = str(find_front()).encode()
    for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(program):
                return int(child)
    return None


POOL_SCRIPT = """
import sys
from pathlib import Path
from pih2t_deploy.serving.front import find_front
from pih2t_deploy.serving.settings import ServeSettings
from pih2t_deploy.serving.workers import ServeSpec, WorkerPool
spec = ServeSpec(model=Path(sys.argv[1]), backend="onnxruntime", device="cpu", threads=1, name=None,
                 settings=ServeSettings(max_wait_ms=20), host="127.0.0.1", port=int(sys.argv[2]),
                 grpc_port=int(sys.argv[3]), drain_s=0.0, header_timeout_s=10.0, max_connections=100,
                 log_level="warning", grpc_front=find_front())
sys.exit(WorkerPool(spec, 2, startup_grace_s=0.5).run())
"""


def test_workers_behind_the_native_front_end_share_one_connection_and_survive_kills(digits_artifact):
    """48 calls at once on one connection reach both workers and get the model's answers; a killed worker, then
    a killed front end, are replaced (a pool with a 0.5 s start-up grace, so that a kill counts as a crash
    while serving) and calls are answered again; SIGTERM stops everything, the front end too."""
    http_port, grpc_port = free_port(), free_port()
    args = [sys.executable, "-c", POOL_SCRIPT, str(digits_artifact[1]), str(http_port), str(grpc_port)]
    pool = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    address = f"127.0.0.1:{grpc_port}"
    classifier = load_classifier(digits_artifact[1])
    model = f"{classifier.info.name}_image"
    blobs = [images.sample(i % 10) for i in range(48)]
    expected = classifier.predict(classifier.prepare([Image.open(io.BytesIO(b)) for b in blobs]))
    try:
        wait_ready(f"http://127.0.0.1:{http_port}", pool, timeout_s=60, what="the worker pool")
        workers = _children(pool.pid)
        assert len(workers) == 2
        deadline = time.monotonic() + 60  # rounds until the second worker, maybe still loading, takes calls too
        while True:
            got = _infer_all(address, model, blobs)
            assert _errors(got) == []
            for index, result, _ in got:
                np.testing.assert_allclose(result.as_numpy("logits")[0], expected[index], rtol=1e-5, atol=1e-5)
            if _workers_connected_to_the_front(workers) == workers:
                break
            assert time.monotonic() < deadline, "the calls never reached both workers"
            time.sleep(0.5)

        os.kill(min(workers), signal.SIGKILL)
        _wait_until_answered(address, model, blobs[:8])
        front = _front_pid(pool.pid)
        assert front is not None
        os.kill(front, signal.SIGKILL)
        _wait_until_answered(address, model, blobs[:8])
        replacement = _front_pid(pool.pid)
        assert replacement not in (None, front)
    finally:
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=30) == 0
    stderr = pool.stderr.read()
    assert "exited with status -9; starting another" in stderr
    assert "the gRPC front end exited with status -9; starting another" in stderr
    assert not Path(f"/proc/{replacement}").exists()


def _wait_until_answered(address: str, model: str, blobs: list[bytes], timeout_s: float = 30.0) -> None:
    """Until every call of a round is answered (calls in progress at a kill get UNAVAILABLE, or no connection)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if not _errors(_infer_all(address, model, blobs)):
                return
        except triton_grpc.InferenceServerException:
            pass
        assert time.monotonic() < deadline, "calls were not answered again"
        time.sleep(0.2)


def test_the_front_end_stops_when_pih2t_serve_is_killed_outright(digits_artifact):
    """SIGKILL gives pih2t-serve no chance to stop its children: the front end stops by itself (the kernel's
    parent-death signal), so the gRPC port is not left held by an orphan."""
    http_port, grpc_port = free_port(), free_port()
    server = start_rest_server(digits_artifact[1], http_port, "--grpc-port", str(grpc_port), "--grpc-front", "native")
    front = _front_pid(server.pid)
    assert front is not None
    server.kill()
    server.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _alive(front) and "zombie" not in _state(front):
        assert time.monotonic() < deadline, "the front end outlived pih2t-serve"
        time.sleep(0.1)
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", grpc_port))


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "gone"
