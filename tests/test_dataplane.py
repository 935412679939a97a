"""The data plane on its own: every operation called directly (no HTTP, no gRPC) on a fake classifier, the
named errors it raises, and the one table per front end that maps them."""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.serving import errors, grpc_service, http_edge
from pih2t_deploy.serving.dataplane import ClassifyRequest, DataPlane, InferRequest
from pih2t_deploy.serving.errors import (
    DeadlineExceeded,
    InvalidInput,
    InvalidParameter,
    ModelNotFound,
    PayloadTooLarge,
    ServingError,
    Unavailable,
    UnsupportedMediaType,
    status_of,
)
from pih2t_deploy.serving.settings import ServeSettings
from pih2t_deploy.serving.v2_codec import ProtocolError, Tensor
from tests import images
from tests.fakes import FakeClassifier


def test_the_data_plane_imports_neither_http_nor_grpc():
    """Imported in a fresh interpreter, the data plane loads no web framework and no gRPC."""
    code = (
        "import sys, pih2t_deploy.serving.dataplane, pih2t_deploy.serving.errors\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'grpc', 'uvicorn') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    imported = {
        node.module
        for node in ast.walk(ast.parse(inspect.getsource(grpc_service)))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {"pih2t_deploy.serving.v2", "pih2t_deploy.serving.v1", "pih2t_deploy.serving.rest"} & imported


def run(plane: DataPlane, operation):
    """Start ``plane``, run ``operation(plane)`` (a coroutine function) on the same loop, stop it."""

    async def scenario():
        await plane.start()
        try:
            return await operation(plane)
        finally:
            await plane.stop()

    return asyncio.run(scenario())


def tensor_request(batch: np.ndarray, outputs=None, request_id=None):
    async def read() -> InferRequest:
        return InferRequest([Tensor("input", "FP32", list(batch.shape), batch)], outputs or [], request_id)

    return read


def test_infer_returns_the_classifiers_logits_and_the_top_k_it_asks_for():
    fake = FakeClassifier()
    batch = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    asked = [{"name": "logits"}, {"name": "logits", "parameters": {"classification": 2}}]
    result = run(DataPlane(lambda: fake), lambda p: p.infer("fake", None, tensor_request(batch, asked, "r-7")))
    assert (result.model_name, result.model_version, result.id) == ("fake", "1", "r-7")
    logits, top2 = result.outputs
    np.testing.assert_allclose(logits.values, FakeClassifier.expected(batch), rtol=1e-6)
    assert (logits.datatype, logits.shape, top2.datatype, top2.shape) == ("FP32", [3, 3], "BYTES", [3, 2])
    expected = FakeClassifier.expected(batch)
    first = int(np.argmax(expected[0]))
    assert top2.values[0] == f"{expected[0][first]:f}:{first}:{FakeClassifier().info.labels[first]}".encode()


@pytest.mark.parametrize(
    ("name", "read", "error", "message"),
    [
        ("other", tensor_request(np.zeros((1, 1, 4, 4), np.float32)), ModelNotFound, "unknown model 'other'"),
        ("fake", tensor_request(np.zeros((1, 1, 4, 5), np.float32)), InvalidInput, r"shape \[N, 1, 4, 4\]"),
        ("fake", tensor_request(np.zeros((33, 1, 4, 4), np.float32)), PayloadTooLarge, "batch of 33 exceeds"),
        (
            "fake",
            tensor_request(np.zeros((1, 1, 4, 4), np.float32), [{"name": "probs"}]),
            InvalidInput,
            "unknown output 'probs'",
        ),
        (
            "fake",
            tensor_request(
                np.zeros((1, 1, 4, 4), np.float32), [{"name": "logits", "parameters": {"classification": 4}}]
            ),
            InvalidInput,
            "classification must be an integer between 1 and 3",
        ),
    ],
)
def test_infer_refuses_with_named_errors(name, read, error, message):
    with pytest.raises(error, match=message):
        run(DataPlane(FakeClassifier), lambda p: p.infer(name, None, read))


def test_classify_ranks_decoded_images_and_checks_top_k_before_decoding():
    fake = FakeClassifier()
    png = images.sample(3)

    async def read() -> ClassifyRequest:
        return ClassifyRequest([("a.png", png)], "2")

    answer = run(DataPlane(lambda: fake), lambda p: p.classify(read))
    probabilities = fake.probabilities(FakeClassifier.expected(fake.prepare([Image.open(io.BytesIO(png))])))[0]
    ranked = sorted(range(3), key=lambda i: -probabilities[i])[:2]
    assert [(p.index, p.label) for p in answer.results[0].predictions] == [(i, fake.info.labels[i]) for i in ranked]
    assert answer.results[0].predictions[0].score == pytest.approx(probabilities[ranked[0]])

    async def bad_k() -> ClassifyRequest:
        return ClassifyRequest([("a.png", b"not decoded")], "٣")  # an Arabic-Indic three is not a top_k

    with pytest.raises(InvalidParameter, match="top_k must be a whole number"):
        run(DataPlane(lambda: fake), lambda p: p.classify(bad_k))


def test_a_plane_that_is_not_started_is_unavailable_and_one_whose_load_failed_is_not_live():
    plane = DataPlane(FakeClassifier)
    with pytest.raises(Unavailable) as refused:
        plane.require_ready()
    assert refused.value.retry_after == 1.0
    assert not plane.model_ready("fake")

    def fails():
        raise RuntimeError("no such file")

    broken = DataPlane(fails)
    asyncio.run(broken.start())
    assert not broken.live and broken.load_error == "RuntimeError: no such file"
    broken.decode_pool.shutdown()


def test_the_batcher_counts_requests_on_their_way_while_they_are_read():
    """While a request's body is read (and its images decoded) it counts as on its way to the batcher, so
    a batch holds for it; the front ends never touch the counter."""
    seen = []

    async def scenario(plane: DataPlane):
        async def read() -> InferRequest:
            seen.append(plane.batcher.on_the_way)
            return await tensor_request(np.zeros((1, 1, 4, 4), np.float32))()

        await plane.infer("fake", None, read)
        seen.append(plane.batcher.on_the_way)

    run(DataPlane(FakeClassifier, ServeSettings(max_wait_ms=0)), scenario)
    assert seen == [1, 0]


@pytest.mark.parametrize(
    ("error", "http", "code"),
    [
        (InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (ProtocolError, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidParameter, 422, grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound, 404, grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge, 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UnsupportedMediaType, 415, grpc.StatusCode.INVALID_ARGUMENT),
        (Unavailable, 503, grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded, 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_named_error_has_one_status_per_front_end(error, http, code):
    assert status_of(error("x"), http_edge.HTTP_STATUS) == http
    assert status_of(error("x"), grpc_service.GRPC_STATUS) == code


def test_every_named_error_is_in_both_tables():
    named = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, ServingError)}
    assert named - {ServingError} == set(http_edge.HTTP_STATUS) == set(grpc_service.GRPC_STATUS)
