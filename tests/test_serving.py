"""pih2t-serve against a real uvicorn server on 127.0.0.1, with httpx and tritonclient.http as clients."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image

from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from tests import images
from tests.helpers import run_cli
from tests.servers import running_server


@pytest.fixture(scope="module")
def classifier(digits_artifact):
    return load_classifier(digits_artifact[1])


@pytest.fixture(scope="module")
def server(classifier):
    with running_server(create_app(lambda: classifier, ServeSettings(max_batch=16, max_upload_mb=0.5))) as (url, _):
        yield url


def expected_top(classifier, blob: bytes, k: int = 3) -> list[int]:
    batch = classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(blob))])
    return list(np.argsort(-classifier.predict(batch)[0], kind="stable")[:k])


def test_multipart_file_matches_onnxruntime(server, classifier):
    answer = httpx.post(
        f"{server}/v1/classify", files={"file": ("d3.png", images.sample(3), "image/png")}, params={"top_k": 3}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "digits-lt" and body["version"]
    predictions = body["results"][0]["predictions"]
    assert [p["index"] for p in predictions] == expected_top(classifier, images.sample(3))
    assert predictions[0]["label"] == classifier.info.labels[predictions[0]["index"]]
    assert predictions[0]["score"] >= predictions[1]["score"] >= predictions[2]["score"]


def test_several_files_and_json_base64_give_the_same_answers(server, classifier):
    blobs = [images.sample(i) for i in range(5)]
    multipart = httpx.post(
        f"{server}/v1/classify", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    )
    as_json = httpx.post(
        f"{server}/v1/classify", json={"images": [base64.b64encode(b).decode() for b in blobs], "top_k": 5}
    )
    assert multipart.status_code == as_json.status_code == 200
    for a, b, blob in zip(multipart.json()["results"], as_json.json()["results"], blobs, strict=True):
        assert a["predictions"] == b["predictions"]
        assert [p["index"] for p in a["predictions"]] == expected_top(classifier, blob, 5)


@pytest.mark.parametrize("name", list(images.variants()))
def test_unusual_but_valid_images_are_classified(server, name):
    blob = images.variants()[name]
    answer = httpx.post(f"{server}/v1/classify", files={"file": (name, blob)})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"][0]["predictions"]) == 5


def _all_scores(server: str, blob: bytes) -> np.ndarray:
    answer = httpx.post(f"{server}/v1/classify", files={"file": ("x.png", blob)}, params={"top_k": 10})
    assert answer.status_code == 200, answer.text
    scores = np.zeros(10)
    for p in answer.json()["results"][0]["predictions"]:
        scores[p["index"]] = p["score"]
    return scores


def test_16_bit_and_transparent_images_follow_the_documented_rule(server, classifier):
    """16-bit images are scaled to 8 bits (not clipped); transparency is composited over white (not black).
    The pixels after preprocessing, and the served scores, equal those of the 8-bit image the rule gives."""
    gray = np.asarray(Image.open(io.BytesIO(images.sample(3))))
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257, "I;16")
    visible = (np.indices(gray.shape).sum(axis=0) % 2).astype(bool)  # a checkerboard of opaque pixels
    rgba = np.dstack([np.where(visible, gray, 0)] * 3 + [np.where(visible, 255, 0)]).astype(np.uint8)
    cases = {
        "16-bit": (sixteen, gray),
        "rgba": (Image.fromarray(rgba, "RGBA"), np.where(visible, gray, 255).astype(np.uint8)),
    }
    prep = classifier.info.preprocessing
    for name, (picture, expected) in cases.items():
        np.testing.assert_array_equal(prep.pixels(picture)[..., 0], expected, err_msg=name)
        reference = classifier.probabilities(classifier.predict(prep.to_numpy([Image.fromarray(expected, "L")])))[0]
        np.testing.assert_allclose(_all_scores(server, images.encode(picture)), reference, atol=1e-6, err_msg=name)


def test_exif_rotation_is_applied(server, classifier):
    image = Image.open(io.BytesIO(images.sample(7))).convert("RGB").resize((32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_file = images.encode(image, "PNG", exif=exif)
    upright = images.encode(image.transpose(Image.Transpose.ROTATE_270))
    a = httpx.post(f"{server}/v1/classify", files={"file": ("a.png", rotated_file)}).json()
    b = httpx.post(f"{server}/v1/classify", files={"file": ("b.png", upright)}).json()
    assert a["results"][0]["predictions"] == b["results"][0]["predictions"]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({}, 422, "empty request"),
        ({"files": {"image": ("x.png", images.sample(1))}}, 422, "field 'file'"),
        ({"files": {"file": ("x.svg", images.SVG, "image/svg+xml")}}, 415, "not an image"),
        ({"files": {"file": ("x.txt", b"hello world")}}, 415, "not an image"),
        ({"files": {"file": ("x.ico", images.icon())}}, 415, "supported format"),
        ({"files": {"file": ("x.png", images.truncated_png())}}, 400, "truncated or corrupt"),
        ({"files": {"file": ("x.png", b"")}}, 400, "empty"),
        ({"files": {"file": ("bomb.png", images.bomb_png())}}, 413, "pixel"),
        ({"files": {"file": ("x.png", images.sample(1))}, "params": {"top_k": 0}}, 422, "top_k"),
        ({"files": {"file": ("x.png", images.sample(1))}, "params": {"top_k": 11}}, 422, "between 1 and 10"),
        ({"files": {"file": ("x.png", images.sample(1))}, "params": {"top_k": "two"}}, 422, "whole number"),
        ({"json": {"images": ["***"]}}, 400, "base64"),
        ({"json": {"pictures": []}}, 422, "images"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "content type"),
        ({"files": {"file": ("big.bin", b"\0" * 600_000)}}, 413, "upload limit"),
        ({"files": [("files", (f"{i}.png", images.sample(1))) for i in range(17)]}, 413, "limit is 16"),
    ],
)
def test_bad_requests_get_4xx_with_a_json_reason(server, kwargs, status, message):
    answer = httpx.post(f"{server}/v1/classify", **kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200


def test_oversize_upload_is_refused_while_streaming(server):
    """A chunked body with no Content-Length is cut off at the limit, long before it has all been sent."""
    sent = []

    def chunks():
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(200):
            sent.append(1)
            yield b"\0" * 65536

    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    answer = httpx.post(f"{server}/v1/classify", content=chunks(), headers=headers)
    assert answer.status_code == 413 and "upload limit" in answer.json()["error"]
    assert len(sent) < 200


def test_open_inference_protocol_with_tritonclient(server, classifier):
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits-lt")
        metadata = client.get_model_metadata("digits-lt")
        assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
        blobs = [images.sample(i) for i in range(4)]
        tensor = classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(b)) for b in blobs])
        expected = classifier.predict(tensor)
        raw = triton_http.InferInput("input", list(tensor.shape), "FP32")
        raw.set_data_from_numpy(tensor)
        logits = client.infer("digits-lt", [raw]).as_numpy("logits")
        np.testing.assert_array_equal(logits, expected)
        encoded = triton_http.InferInput("image", [4], "BYTES")
        encoded.set_data_from_numpy(np.array(blobs, dtype=object))
        wanted = [triton_http.InferRequestedOutput("logits", class_count=3)]
        top = client.infer("digits-lt", [encoded], outputs=wanted).as_numpy("logits")
        assert top.shape == (4, 3)
        for row, logit_row in zip(top, expected, strict=True):
            indices = [int(item.decode().split(":")[1]) for item in row]
            assert indices == list(np.argsort(-logit_row, kind="stable")[:3])
        as_json = [triton_http.InferRequestedOutput("logits", binary_data=False)]
        np.testing.assert_allclose(
            client.infer("digits-lt", [raw], outputs=as_json).as_numpy("logits"), expected, rtol=1e-6
        )
    finally:
        client.close()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}]},
            "[N, 1, 8, 8]",
        ),
        ({"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 1, 8, 8], "data": [0] * 64}]}, "must be FP32"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 10}]}, "10 values"),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.0]}]}, "unknown input"),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}, "not an image"),
    ],
)
def test_v2_infer_rejects_bad_tensors_with_400(server, payload, message):
    answer = httpx.post(f"{server}/v2/models/digits-lt/infer", json=payload)
    assert answer.status_code in (400, 415), answer.text
    assert message in answer.json()["error"]


def _tensor(**changes):
    entry = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}
    return {"inputs": [{**entry, **changes}]}


MALFORMED_V2 = {
    "nested 1,000 deep": (b"[" * 1000 + b"]" * 1000, {}, "nested too deeply"),
    "a 5,000-digit integer": (b'{"inputs": [], "id": ' + b"9" * 5000 + b"}", {}, "not valid JSON"),
    "shape of 2**32 x 2**32": (json.dumps(_tensor(shape=[2**32, 2**32, 1, 1], data=[])).encode(), {}, "below 2**31"),
    "a boolean in the shape": (json.dumps(_tensor(shape=[True, 1, 8, 8])).encode(), {}, "shape must be a list of"),
    "parameters as a list": (json.dumps({**_tensor(), "parameters": [1]}).encode(), {}, "'parameters' must be"),
    "input parameters as a string": (json.dumps(_tensor(parameters="x")).encode(), {}, "'parameters' must be"),
    "outputs not a list": (json.dumps({**_tensor(), "outputs": 5}).encode(), {}, "'outputs' must be a list"),
    "output parameters as a list": (
        json.dumps({**_tensor(), "outputs": [{"name": "logits", "parameters": []}]}).encode(),
        {},
        "'parameters' must be",
    ),
    "classification true": (
        json.dumps({**_tensor(), "outputs": [{"name": "logits", "parameters": {"classification": True}}]}).encode(),
        {},
        "classification must be an integer",
    ),
    "non-numeric header length": (
        json.dumps(_tensor()).encode(),
        {"Inference-Header-Content-Length": "abc"},
        "not a byte",
    ),
    "NaN in the data": (json.dumps(_tensor()).replace("0.0,", "NaN,", 1).encode(), {}, "non-finite number NaN"),
    "Infinity in the data": (json.dumps(_tensor()).replace("0.0,", "-Infinity,", 1).encode(), {}, "non-finite"),
    "1e39 as FP32": (json.dumps(_tensor(data=[1e39] + [0.0] * 63)).encode(), {}, "finite FP32"),
    "base64 BYTES outside ASCII (found by schemathesis)": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": ["\u00e9\u00df"],
                        "parameters": {"content_type": "base64"},
                    }
                ]
            }
        ).encode(),
        {},
        "content_type is 'base64' but the data is not valid base64",
    ),
    "an unknown BYTES content_type": (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": ["x"],
                        "parameters": {"content_type": "hex"},
                    }
                ]
            }
        ).encode(),
        {},
        "content_type must be 'str' or 'base64'",
    ),
    "BYTES given as numbers": (
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}).encode(),
        {},
        "BYTES data in JSON must be strings",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_V2))
def test_malformed_v2_bodies_get_400_with_a_reason_never_500(server, case):
    body, headers, message = MALFORMED_V2[case]
    answer = httpx.post(
        f"{server}/v2/models/digits-lt/infer", content=body, headers={"content-type": "application/json", **headers}
    )
    assert answer.status_code == 400, (case, answer.status_code, answer.text[:300])
    assert message in answer.json()["error"], answer.json()
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200


def test_malformed_v1_json_gets_400(server):
    outside_ascii = json.dumps({"images": ["\u00e9\ud957\udfb4"]}).encode()  # found by schemathesis: was a 500
    for body in (b"[" * 1000 + b"]" * 1000, b'{"images": [' + b"1" * 5000 + b"]}", b'{"images": [NaN]}', outside_ascii):
        answer = httpx.post(f"{server}/v1/classify", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text[:300]
        json.loads(answer.text)  # a JSON reason, never a bare NaN token


def test_binary_fp32_data_that_is_not_finite_gets_400(server):
    data = np.zeros((1, 1, 8, 8), dtype=np.float32)
    data[0, 0, 0, 0] = np.nan
    header = json.dumps(
        {"inputs": [{**_tensor()["inputs"][0], "parameters": {"binary_data_size": data.nbytes}}]}
    ).encode()
    del_data = json.loads(header)
    del del_data["inputs"][0]["data"]
    header = json.dumps(del_data).encode()
    answer = httpx.post(
        f"{server}/v2/models/digits-lt/infer",
        content=header + data.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert answer.status_code == 400 and "finite FP32" in answer.json()["error"], answer.text[:300]


def test_model_config_for_tritonclient_and_perf_analyzer(server, classifier):
    """tritonclient's get_model_config (what perf_analyzer reads before it starts): the batch limit of the
    service, the one input of each model name (tensor for digits-lt, encoded images for digits-lt_image), the
    output with its labels file."""
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    try:
        config = client.get_model_config("digits-lt")
        version = client.get_model_metadata("digits-lt")["versions"][0]
        assert client.get_model_config("digits-lt", model_version=version) == config
        image_config = client.get_model_config("digits-lt_image")
    finally:
        client.close()
    assert config["max_batch_size"] == 16 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, 8, 8]}]
    assert image_config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": [1]}]
    for each in (config, image_config):
        assert each["output"] == [
            {"name": "logits", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "labels.txt"}
        ]


def test_each_model_name_lists_what_a_client_sends_and_that_succeeds(server, classifier):
    """A client that reads a model's metadata and sends exactly the inputs it lists, with the datatype and
    shape it lists, gets the model's answer: digits-lt lists the FP32 tensor, digits-lt_image the encoded
    images (BYTES [-1, 1]). Both give the same logits for the same images."""
    blobs = [images.sample(i) for i in range(3)]
    expected = classifier.predict(classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(b)) for b in blobs]))
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    try:
        for model, values in (
            ("digits-lt", classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(b)) for b in blobs])),
            ("digits-lt_image", np.array(blobs, dtype=object).reshape(3, 1)),
        ):
            (listed,) = client.get_model_metadata(model)["inputs"]
            shape = [len(blobs), *listed["shape"][1:]]
            sent = triton_http.InferInput(listed["name"], shape, listed["datatype"])
            sent.set_data_from_numpy(values.astype(np.float32) if listed["datatype"] == "FP32" else values)
            np.testing.assert_allclose(client.infer(model, [sent]).as_numpy("logits"), expected, rtol=1e-6)
        assert client.is_model_ready("digits-lt_image")
    finally:
        client.close()
    assert httpx.get(f"{server}/v2/models/digits-lt_image").json()["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1, 1]}
    ]
    assert httpx.get(f"{server}/v2/models/digits-lt_other").status_code == 404


def test_bytes_in_json_are_plain_strings_and_base64_only_when_the_input_says_so(server, classifier):
    """Open Inference Protocol JSON carries BYTES elements as strings (tritonclient with binary_data=False,
    KServe's client): an image in a text format (plain PGM) sent that way is classified like the same image
    sent as binary data; the same bytes in base64 are decoded only with parameters.content_type = base64."""
    pixels = np.asarray(Image.open(io.BytesIO(images.sample(6))).convert("L"))
    height, width = pixels.shape
    pgm = f"P2\n{width} {height}\n255\n" + "\n".join(" ".join(map(str, row)) for row in pixels) + "\n"
    expected = classifier.predict(classifier.info.preprocessing.to_numpy([Image.fromarray(pixels)]))
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    try:
        as_text = triton_http.InferInput("image", [1, 1], "BYTES")
        as_text.set_data_from_numpy(np.array([[pgm.encode()]], dtype=object), binary_data=False)
        np.testing.assert_allclose(client.infer("digits-lt_image", [as_text]).as_numpy("logits"), expected, rtol=1e-6)
    finally:
        client.close()
    encoded = base64.b64encode(pgm.encode()).decode()
    request = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}
    with_flag = {"inputs": [{**request, "parameters": {"content_type": "base64"}}]}
    answer = httpx.post(f"{server}/v2/models/digits-lt/infer", json=with_flag)
    np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(1, -1), expected, rtol=1e-6)
    without_flag = httpx.post(f"{server}/v2/models/digits-lt/infer", json={"inputs": [request]})
    assert without_flag.status_code == 415 and "not an image" in without_flag.json()["error"]


def test_unknown_version_is_404_and_a_wrong_method_is_405_with_allow(server, classifier):
    for path in ("versions/7", "versions/7/ready", "versions/7/config"):
        answer = httpx.get(f"{server}/v2/models/digits-lt/{path}")
        assert answer.status_code == 404 and "unknown version '7' of model 'digits-lt'" in answer.json()["error"]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}
    assert httpx.post(f"{server}/v2/models/digits-lt/versions/7/infer", json=body).status_code == 404
    ok = httpx.post(f"{server}/v2/models/digits-lt/versions/{classifier.info.version}/infer", json=body)
    assert ok.status_code == 200 and ok.json()["model_version"] == classifier.info.version
    wrong = httpx.get(f"{server}/v1/classify")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", wrong.headers


def test_the_pixels_of_a_whole_request_are_bounded_before_decoding(classifier):
    """Budget 200 pixels per request: three 8x8 images (192) pass, four (256) are refused with 413 before any
    is decoded, on /v1 and on the v2 image input alike; a 6000x6000 PNG header alone is refused too."""
    import io

    blob = images.sample(3)
    huge = io.BytesIO()
    Image.new("L", (6000, 6000)).save(huge, format="PNG")
    with running_server(create_app(lambda: classifier, ServeSettings(max_request_pixels=200))) as (url, _):
        ok = httpx.post(f"{url}/v1/classify", files=[("files", (f"{i}.png", blob)) for i in range(3)])
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3
        over = httpx.post(f"{url}/v1/classify", files=[("files", (f"{i}.png", blob)) for i in range(4)])
        assert over.status_code == 413, over.text
        assert over.json()["error"] == (
            "the 4 images of this request hold 256 pixels; the limit per request is 200 "
            "(send fewer or smaller images per request)"
        )
        big = httpx.post(f"{url}/v1/classify", files={"file": ("big.png", huge.getvalue())})
        assert big.status_code == 413 and "36,000,000 pixels" in big.json()["error"]
        v2 = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [4],
                    "data": [base64.b64encode(blob).decode()] * 4,
                    "parameters": {"content_type": "base64"},
                }
            ]
        }
        answer = httpx.post(f"{url}/v2/models/digits-lt/infer", json=v2)
        assert answer.status_code == 413 and "limit per request is 200" in answer.json()["error"]


def test_v2_unknown_model_is_404(server):
    answer = httpx.get(f"{server}/v2/models/resnet/ready")
    assert answer.status_code == 404 and "unknown model" in answer.json()["error"]


def test_concurrent_requests_equal_single_requests_and_are_batched(server):
    blobs = [images.sample(i % 10) for i in range(48)]
    single = [httpx.post(f"{server}/v1/classify", files={"file": ("x.png", b)}).json()["results"] for b in blobs[:10]]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: httpx.post(f"{server}/v1/classify", files={"file": ("x.png", b)}), blobs))
    assert all(a.status_code == 200 for a in answers)
    for i, answer in enumerate(answers):
        assert answer.json()["results"] == single[i % 10]
    metrics = httpx.get(f"{server}/metrics").text
    assert 'pih2t_requests_total{route="/v1/classify",status="200"}' in metrics
    sizes = {
        line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("pih2t_batch_size_")
    }
    assert sizes["pih2t_batch_size_count"] < sizes["pih2t_batch_size_sum"], "some batches held several requests"
    assert "pih2t_model_load_seconds" in metrics and "pih2t_queue_depth" in metrics


class SlowClassifier:
    """The real classifier with a fixed delay per batch, to fill the queue deterministically."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def predict(self, batch):
        time.sleep(self.delay)
        return self.inner.predict(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_full_queue_answers_503_with_retry_after_and_slow_answers_504(classifier):
    settings = ServeSettings(max_batch=1, max_wait_ms=0, max_queue=2, timeout_s=0.6)
    with running_server(create_app(lambda: SlowClassifier(classifier, 0.25), settings)) as (url, _):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda _i: httpx.post(
                        f"{url}/v1/classify", files={"file": ("x.png", images.sample(2))}, timeout=10
                    ),
                    range(8),
                )
            )
        codes = sorted(a.status_code for a in answers)
        assert 503 in codes and 200 in codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue is full" in busy.json()["error"]
        assert 504 in codes or all(c in (200, 503) for c in codes)
    with running_server(create_app(lambda: SlowClassifier(classifier, 1.0), ServeSettings(timeout_s=0.2))) as (url, _):
        answer = httpx.post(f"{url}/v1/classify", files={"file": ("x.png", images.sample(2))}, timeout=10)
        assert answer.status_code == 504 and "no answer within" in answer.json()["error"]


def test_ready_only_after_load_and_graceful_shutdown_finishes_in_flight(classifier):
    def slow_load():
        time.sleep(1.0)
        return SlowClassifier(classifier, 0.5)

    with running_server(create_app(slow_load), wait_ready=False) as (url, server):
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        not_yet = httpx.get(f"{url}/v2/health/ready")
        assert not_yet.status_code == 503 and not_yet.json() == {"ready": False}
        busy = httpx.post(f"{url}/v1/classify", files={"file": ("x.png", images.sample(2))})
        assert busy.status_code == 503
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        result = {}
        request = threading.Thread(
            target=lambda: result.setdefault(
                "r", httpx.post(f"{url}/v1/classify", files={"file": ("x.png", images.sample(2))}, timeout=10)
            )
        )
        request.start()
        time.sleep(0.2)
        server.should_exit = True
        request.join(timeout=15)
        assert result["r"].status_code == 200


def test_openapi_documents_every_route_with_response_models(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    for path in ("/v1/classify", "/v1/model", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/infer"):
        method = "post" if path.endswith(("classify", "infer")) else "get"
        responses = spec["paths"][path][method]["responses"]
        assert "$ref" in str(responses["200"]), path
    assert httpx.get(f"{server}/docs").status_code == 200
    card = httpx.get(f"{server}/v1/model").json()
    assert card["labels"] == [str(i) for i in range(10)] and card["class_counts"][0] == 120


def test_scores_are_softmax_probabilities(server, classifier):
    body = httpx.post(f"{server}/v1/classify", files={"file": ("x.png", images.sample(5))}, params={"top_k": 10}).json()
    scores = [p["score"] for p in body["results"][0]["predictions"]]
    assert sum(scores) == pytest.approx(1.0)
    batch = classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(images.sample(5)))])
    assert max(scores) == pytest.approx(classifier.probabilities(classifier.predict(batch)).max())


def test_a_model_that_fails_to_load_makes_liveness_fail(classifier):
    def broken():
        raise RuntimeError("disk on fire")

    with running_server(create_app(broken), wait_ready=False) as (url, _):
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v2/health/live").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        live = httpx.get(f"{url}/v2/health/live")
        assert live.status_code == 503 and "disk on fire" in live.json()["error"]
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503


def test_serve_cli_refuses_bad_models_with_one_line(tmp_path, digits_artifact):

    (tmp_path / "empty").mkdir()
    for args, message in (
        (["--model", str(tmp_path / "none")], "does not exist"),
        (["--model", str(tmp_path / "empty")], "not an exported artifact"),
        (["--model", str(digits_artifact[1]), "--backend", "tensorrt", "--device", "cuda"], "TensorRT"),
        (["--model", str(digits_artifact[1]), "--backend", "torch"], "no model.pt2"),
        (["--model", str(digits_artifact[1]), "--device", "cuda"], "CUDAExecutionProvider"),
        (["--model", str(digits_artifact[1]), "--port", "0"], "--port"),
    ):
        done = run_cli("serve", *args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_torch_backend_serves_a_checkpoint_with_the_same_answers(digits_artifact, classifier):
    torch_classifier = load_classifier(digits_artifact[0], "torch")
    batch = classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(images.sample(i))) for i in range(10)])
    np.testing.assert_allclose(torch_classifier.predict(batch), classifier.predict(batch), atol=1e-4)
    assert torch_classifier.info.labels == classifier.info.labels


def test_concurrent_multi_image_requests_get_their_own_rows(server, classifier):
    """Requests of 1 to 7 images each, sent at once, share micro-batches (max 16 images, so some requests
    straddle two batches): every row of every answer equals the single-image answer for that image."""
    digits = [images.sample(i) for i in range(10)]
    reference = {i: _all_scores(server, digits[i]) for i in range(10)}
    plans = [[(start + k) % 10 for k in range(size)] for start, size in enumerate([1, 7, 3, 5, 2, 6, 4, 7, 1, 5, 3, 6])]

    def ask(plan):
        files = [("files", (f"{i}.png", digits[i], "image/png")) for i in plan]
        return httpx.post(f"{server}/v1/classify", files=files, params={"top_k": 10}, timeout=60)

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
            answers = list(pool.map(ask, plans))
        for plan, answer in zip(plans, answers, strict=True):
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            assert [r["filename"] for r in results] == [f"{i}.png" for i in plan]
            for digit, result in zip(plan, results, strict=True):
                scores = np.zeros(10)
                for p in result["predictions"]:
                    scores[p["index"]] = p["score"]
                np.testing.assert_allclose(scores, reference[digit], atol=1e-6, err_msg=f"image {digit} of {plan}")


def test_v2_json_and_binary_tensors_agree_element_by_element(server, classifier):
    """The same request through the JSON and the binary tensor encodings, both ways, and the classification
    extension in JSON and binary: element by element equal to onnxruntime and to each other."""
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    try:
        blobs = [images.sample(i) for i in (3, 1, 4, 1, 5)]
        tensor = classifier.info.preprocessing.to_numpy([Image.open(io.BytesIO(b)) for b in blobs])
        expected = classifier.predict(tensor)
        outputs = {}
        for inp_binary in (True, False):
            raw = triton_http.InferInput("input", list(tensor.shape), "FP32")
            raw.set_data_from_numpy(tensor, binary_data=inp_binary)
            for out_binary in (True, False):
                wanted = [triton_http.InferRequestedOutput("logits", binary_data=out_binary)]
                outputs[inp_binary, out_binary] = client.infer("digits-lt", [raw], outputs=wanted).as_numpy("logits")
        for key, logits in outputs.items():
            np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6, err_msg=str(key))
        raw = triton_http.InferInput("input", list(tensor.shape), "FP32")
        raw.set_data_from_numpy(tensor, binary_data=False)
        tops = {}
        for out_binary in (True, False):
            wanted = [triton_http.InferRequestedOutput("logits", class_count=4, binary_data=out_binary)]
            top = client.infer("digits-lt", [raw], outputs=wanted).as_numpy("logits")
            tops[out_binary] = [[(v.decode() if isinstance(v, bytes) else v) for v in row] for row in top]
        assert tops[True] == tops[False]
        for row, logit_row in zip(tops[False], expected, strict=True):
            assert [int(item.split(":")[1]) for item in row] == list(np.argsort(-logit_row, kind="stable")[:4])
            assert [float(item.split(":")[0]) for item in row] == pytest.approx(sorted(logit_row)[::-1][:4], abs=1e-5)
    finally:
        client.close()
