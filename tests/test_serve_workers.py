"""``pih2t-serve --workers N``: real worker processes sharing one HTTP and one gRPC port on 127.0.0.1, the
metrics summed across them, a dead worker replaced, a worker that cannot start stopping the server."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
from PIL import Image

from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import free_port, start_rest_server, wait_ready
from tests import images


def _children(pid: int) -> set[int]:
    """The worker processes of ``pid`` (its multiprocessing resource tracker left out)."""
    found = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
            found.add(int(child))
    return found


def _answering_workers(url: str, calls: int) -> list[int]:
    """The worker process id behind each of ``calls`` requests, each on a new connection."""
    return [httpx.get(f"{url}/v1/model").json()["worker_pid"] for _ in range(calls)]


def _metric(url: str, line_start: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    (value,) = re.findall(rf"^{re.escape(line_start)} (\S+)$", text, flags=re.M)
    return float(value)


def test_two_workers_share_both_ports_answer_like_the_model_and_metrics_sum_over_them(digits_artifact):
    http_port, grpc_port = free_port(), free_port()
    options = ("--workers", "2", "--grpc-port", str(grpc_port), "--expose-process-info")
    server = start_rest_server(digits_artifact[1], http_port, *options)
    url = f"http://127.0.0.1:{http_port}"
    try:
        workers = _children(server.pid)
        assert len(workers) == 2
        before = _metric(url, 'pih2t_requests_total{route="/v1/model",status="200"}')
        answered_by = _answering_workers(url, 40)
        assert set(answered_by) == workers  # both take connections, and nothing else answers
        # whichever worker answers the scrape, it counts the other's requests too
        after = _metric(url, 'pih2t_requests_total{route="/v1/model",status="200"}')
        assert after - before == 40

        classifier = load_classifier(digits_artifact[1])
        blobs = [images.sample(i) for i in range(6)]
        expected = classifier.predict(classifier.prepare([Image.open(io.BytesIO(b)) for b in blobs])).argmax(1)
        for blob, label in zip(blobs, expected, strict=True):
            answer = httpx.post(f"{url}/v1/classify", files={"files": ("d.png", blob)}).json()
            assert answer["results"][0]["predictions"][0]["index"] == label
        assert _metric(url, "pih2t_images_total") == 6

        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert client.is_server_ready() and client.is_model_ready(classifier.info.name)
        finally:
            client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_grpc_calls_on_one_connection_are_handed_to_the_other_worker_and_answered_like_the_model(digits_artifact):
    """One gRPC channel is one HTTP/2 connection, which the kernel gives to one worker: with 48 calls in flight
    on it, that worker hands calls to the other (``pih2t_grpc_handoffs`` counts them), and every answer is
    the model's for its own image."""
    http_port, grpc_port = free_port(), free_port()
    options = ("--workers", "2", "--grpc-port", str(grpc_port), "--expose-process-info", "--max-wait-ms", "50")
    server = start_rest_server(digits_artifact[1], http_port, *options)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60  # a worker answers HTTP only once its model is loaded
        while set(_answering_workers(url, 10)) != _children(server.pid):
            assert time.monotonic() < deadline, "both workers never answered"
        classifier = load_classifier(digits_artifact[1])
        blobs = [images.sample(i % 10) for i in range(48)]
        expected = classifier.predict(classifier.prepare([Image.open(io.BytesIO(b)) for b in blobs]))
        answers: queue.Queue = queue.Queue()
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for index, blob in enumerate(blobs):
                sent = triton_grpc.InferInput("image", [1, 1], "BYTES")
                sent.set_data_from_numpy(np.array([[blob]], dtype=object))
                done = lambda result, error, index=index: answers.put((index, result, error))  # noqa: E731
                client.async_infer(f"{classifier.info.name}_image", [sent], done)
            got = [answers.get(timeout=60) for _ in blobs]
        finally:
            client.close()
        assert [error for _, _, error in got if error is not None] == []
        for index, result, _ in got:
            np.testing.assert_allclose(result.as_numpy("logits")[0], expected[index], rtol=1e-5, atol=1e-5)
        assert 0 < _metric(url, "pih2t_grpc_handoffs_total") < len(blobs)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


POOL_SCRIPT = """
import sys
from pathlib import Path
from pih2t_deploy.serving.settings import ServeSettings
from pih2t_deploy.serving.workers import ServeSpec, WorkerPool
spec = ServeSpec(model=Path(sys.argv[1]), backend="onnxruntime", device="cpu", threads=1, name=None,
                 settings=ServeSettings(expose_process_info=True), host="127.0.0.1", port=int(sys.argv[2]),
                 grpc_port=int(sys.argv[3]), drain_s=0.0, header_timeout_s=10.0, max_connections=100,
                 log_level="warning")
sys.exit(WorkerPool(spec, 2, startup_grace_s=float(sys.argv[4])).run())
"""


def _pool(artifact: Path, port: int, grpc_port: int, grace_s: float) -> subprocess.Popen:
    """A WorkerPool of two workers in its own process, with a short start-up grace so the test need not wait
    the real one (15 s) before a worker's death counts as a crash while serving."""
    args = [sys.executable, "-c", POOL_SCRIPT, str(artifact), str(port), str(grpc_port), str(grace_s)]
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True)


def test_a_worker_killed_while_serving_is_replaced_and_the_port_keeps_answering(digits_artifact):
    port = free_port()
    pool = _pool(digits_artifact[1], port, 0, grace_s=0.5)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, pool, timeout_s=60, what="the worker pool")
        deadline = time.monotonic() + 30
        while len(_children(pool.pid)) < 2 or set(_answering_workers(url, 10)) != _children(pool.pid):
            assert time.monotonic() < deadline, "both workers never answered"
        first = _children(pool.pid)
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = _children(pool.pid)
            if len(now) == 2 and killed not in now:
                replacement = (now - first).pop()
                answered = set(_answering_workers(url, 20))
                if replacement in answered:
                    break
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.2)
        assert answered <= now
    finally:
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=30) == 0
    assert "exited with status -9; starting another" in pool.stderr.read()


def test_a_worker_that_cannot_start_stops_the_server_with_status_1(digits_artifact):
    with socket.socket() as taken:  # a gRPC port held without SO_REUSEPORT: every worker fails to bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pool = _pool(digits_artifact[1], free_port(), taken.getsockname()[1], grace_s=60)
        try:
            assert pool.wait(timeout=60) == 1
        finally:
            pool.kill()
    assert "while starting; stopping" in pool.stderr.read()
