"""pih2t-serve on the KServe v2 gRPC protocol, tried with tritonclient.grpc (a client nobody here wrote)
against a real server process on 127.0.0.1: the same answers as HTTP and onnxruntime, the same errors, whether
grpcio in the worker takes the calls or the native front end (``--grpc-front native``, built by ``make test``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from PIL import Image
from tritonclient.utils import InferenceServerException

from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import free_port, start_rest_server
from tests import images


@pytest.fixture(scope="module", params=["python", "native"])
def grpc_server(request, digits_artifact):
    """(gRPC address, HTTP URL) of one pih2t-serve with both protocols on, gRPC taken by each front end."""
    http_port, grpc_port = free_port(), free_port()
    options = ("--grpc-port", str(grpc_port), "--max-batch", "8", "--grpc-front", request.param)
    server = start_rest_server(digits_artifact[1], http_port, *options)
    try:
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def classifier(digits_artifact):
    return load_classifier(digits_artifact[1])


@pytest.fixture
def client(grpc_server):
    client = triton_grpc.InferenceServerClient(grpc_server[0])
    yield client
    client.close()


def _pictures(indices):
    blobs = [images.sample(i) for i in indices]
    return blobs, [Image.open(io.BytesIO(b)) for b in blobs]


def test_health_metadata_and_config_over_grpc(client, classifier):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-lt") and client.is_model_ready("digits-lt_image")
    assert not client.is_model_ready("other")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "pih2t-serve" and "classification" in server["extensions"]
    tensor = client.get_model_metadata("digits-lt", as_json=True)
    assert tensor["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert tensor["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    image = client.get_model_metadata("digits-lt_image", as_json=True)
    assert image["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]}]
    config = client.get_model_config("digits-lt", as_json=True)["config"]
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == ["1", "8", "8"]
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_tensor_and_image_inference_match_onnxruntime_and_http(client, classifier, grpc_server):
    import tritonclient.http as triton_http

    blobs, pictures = _pictures(range(5))
    tensor = classifier.info.preprocessing.to_numpy(pictures)
    expected = classifier.predict(tensor)
    sent = triton_grpc.InferInput("input", list(tensor.shape), "FP32")
    sent.set_data_from_numpy(tensor)
    np.testing.assert_array_equal(client.infer("digits-lt", [sent]).as_numpy("logits"), expected)
    encoded = triton_grpc.InferInput("image", [5, 1], "BYTES")
    encoded.set_data_from_numpy(np.array(blobs, dtype=object).reshape(5, 1))
    wanted = [triton_grpc.InferRequestedOutput("logits", class_count=3)]
    top = client.infer("digits-lt_image", [encoded], outputs=wanted).as_numpy("logits")
    http = triton_http.InferenceServerClient(grpc_server[1].removeprefix("http://"))
    try:
        http_input = triton_http.InferInput("image", [5, 1], "BYTES")
        http_input.set_data_from_numpy(np.array(blobs, dtype=object).reshape(5, 1))
        http_top = http.infer(
            "digits-lt_image", [http_input], outputs=[triton_http.InferRequestedOutput("logits", class_count=3)]
        ).as_numpy("logits")
    finally:
        http.close()
    assert top.tolist() == http_top.tolist()
    for row, logits in zip(top, expected, strict=True):
        assert [int(item.decode().split(":")[1]) for item in row] == list(np.argsort(-logits, kind="stable")[:3])
        assert float(row[0].decode().split(":")[0]) == pytest.approx(logits.max(), abs=1e-5)


@pytest.mark.parametrize(
    ("model", "build", "code", "message"),
    [
        ("nope", lambda: [_fp32([1, 1, 8, 8])], "StatusCode.NOT_FOUND", "unknown model 'nope'"),
        ("digits-lt", lambda: [_fp32([1, 3, 8, 8])], "StatusCode.INVALID_ARGUMENT", "[N, 1, 8, 8]"),
        ("digits-lt", lambda: [_fp32([9, 1, 8, 8])], "StatusCode.RESOURCE_EXHAUSTED", "exceeds the limit of 8"),
        ("digits-lt", lambda: [_fp32([1, 1, 8, 8], np.nan)], "StatusCode.INVALID_ARGUMENT", "finite FP32"),
        ("digits-lt_image", lambda: [_image(b"not an image")], "StatusCode.INVALID_ARGUMENT", "not an image"),
    ],
)
def test_bad_requests_get_the_status_and_reason_http_gives(client, model, build, code, message):
    with pytest.raises(InferenceServerException) as refused:
        client.infer(model, build())
    assert refused.value.status() == code and message in refused.value.message()
    assert client.is_server_ready()


def _fp32(shape, fill=0.0):
    tensor = triton_grpc.InferInput("input", shape, "FP32")
    tensor.set_data_from_numpy(np.full(shape, fill, dtype=np.float32))
    return tensor


def _image(blob):
    tensor = triton_grpc.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[blob]], dtype=object))
    return tensor
