"""The HTTP edge around the data plane on a real uvicorn server (fake classifier, so it starts at once): the
upload limit at its exact boundary, error answers counted in /metrics, the timeout answer."""

from __future__ import annotations

import json
import re
import threading

import httpx
import numpy as np
import pytest

from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from tests.fakes import FakeClassifier
from tests.servers import running_server

LIMIT = 1024  # --max-upload-mb 1/1024


def body_of_size(size: int) -> bytes:
    """A valid v2 request for the fake model padded with JSON whitespace to exactly ``size`` bytes."""
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4, 4], "data": [0.5] * 16}]}
    text = json.dumps(request).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


@pytest.fixture(scope="module")
def url():
    settings = ServeSettings(max_upload_mb=LIMIT / (1024 * 1024))
    with running_server(create_app(FakeClassifier, settings)) as (address, _):
        yield address


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_is_served_and_one_byte_more_is_413(url, chunked):
    def send(body: bytes) -> httpx.Response:
        content = iter([body[:100], body[100:]]) if chunked else body
        return httpx.post(f"{url}/v2/models/fake/infer", content=content, timeout=10)

    exact = send(body_of_size(LIMIT))
    assert exact.status_code == 200, exact.text
    expected = FakeClassifier.expected(np.full((1, 1, 4, 4), 0.5))
    np.testing.assert_allclose(exact.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-6)
    over = send(body_of_size(LIMIT + 1))
    assert over.status_code == 413
    assert over.json() == {"error": "request body exceeds the upload limit of 1,024 bytes"}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_error_answers_are_counted_by_route_and_status():
    """Every answer counts, errors included: 404 (unknown model), 400 (bad body), 422 (bad top_k), 413 from the
    body limit (before any route is matched), beside the 200s."""
    settings = ServeSettings(max_upload_mb=LIMIT / (1024 * 1024))
    with running_server(create_app(FakeClassifier, settings)) as (address, _):
        infer = "/v2/models/{name}/infer"
        assert httpx.post(f"{address}/v2/models/fake/infer", content=body_of_size(500)).status_code == 200
        assert httpx.post(f"{address}/v2/models/nope/infer", content=body_of_size(500)).status_code == 404
        for _ in range(2):
            assert httpx.post(f"{address}/v2/models/fake/infer", content=b"{").status_code == 400
        assert httpx.post(f"{address}/v1/classify?top_k=x", json={"images": ["AA=="]}).status_code == 422
        assert httpx.post(f"{address}/v2/models/fake/infer", content=b" " * 2000).status_code == 413
        text = httpx.get(f"{address}/metrics").text
    assert metric(text, "pih2t_requests_total", route=infer, status="200") == 1
    assert metric(text, "pih2t_requests_total", route=infer, status="404") == 1
    assert metric(text, "pih2t_requests_total", route=infer, status="400") == 2
    assert metric(text, "pih2t_requests_total", route="/v1/classify", status="422") == 1
    assert metric(text, "pih2t_requests_total", route="unmatched", status="413") == 1


class SlowFake(FakeClassifier):
    """Holds every batch after warm-up until ``release`` is set."""

    release = threading.Event()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(self.calls) >= 2:  # the two warm-up batches pass
            self.release.wait(10)
        return super().predict(batch)


def test_a_request_without_an_answer_in_time_is_504_with_the_timeout_named():
    with running_server(create_app(SlowFake, ServeSettings(timeout_s=0.3))) as (address, _):
        late = httpx.post(f"{address}/v2/models/fake/infer", content=body_of_size(500), timeout=10)
        SlowFake.release.set()
    assert late.status_code == 504 and late.json() == {"error": "no answer within 0.3 s"}


def test_a_one_pixel_high_strip_is_classified_like_its_centre(url):
    """1 x 100,000 pixels: only the part the centre crop keeps is resized, so the answer is quick and equals
    the classifier's output for that centre square."""
    import io

    from PIL import Image

    strip = np.zeros((1, 100_000), np.uint8)
    strip[0, 49_990:50_010] = 255  # a bright dash in the middle
    buffer = io.BytesIO()
    Image.fromarray(strip, mode="L").save(buffer, format="PNG")
    answer = httpx.post(f"{url}/v1/classify", files={"file": ("strip.png", buffer.getvalue())}, params={"top_k": 3})
    assert answer.status_code == 200, answer.text
    fake = FakeClassifier()
    probabilities = fake.probabilities(FakeClassifier.expected(fake.prepare([Image.fromarray(strip, mode="L")])))[0]
    shown = {p["index"]: p["score"] for p in answer.json()["results"][0]["predictions"]}
    assert shown == pytest.approx({i: probabilities[i] for i in range(3)})


def test_process_details_are_shown_only_when_asked_for():
    import os

    meta = {"arch": "fake_net", "versions": {"pih2t_deploy": "0.1.0", "torch": "2.14.1"}}
    for exposed in (False, True):
        app = create_app(lambda: FakeClassifier(meta=meta), ServeSettings(expose_process_info=exposed))
        with running_server(app) as (address, _):
            card = httpx.get(f"{address}/v1/model").json()
        assert card["pid"] == (os.getpid() if exposed else None)
        assert ("versions" in card["meta"]["meta"]) == exposed and card["meta"]["meta"]["arch"] == "fake_net"


def test_a_ray_instance_the_run_starts_itself_stays_on_this_machine():
    from pih2t_deploy.predict.ray_engine import local_ray_options

    assert local_ray_options(None) == {"_node_ip_address": "127.0.0.1", "include_dashboard": False}
    assert local_ray_options("ray://cluster:10001") == {}


@pytest.mark.parametrize("length", ["\xb2", "\u0662", "-5", "1e3", "0x10", "9" * 50])
def test_a_header_length_that_is_not_ascii_digits_is_400_never_500(url, length):
    """The byte 0xB2 arrives as the superscript two, which str.isdigit() accepts and int() refuses."""
    raw = length.encode("latin-1") if length == "\xb2" else length.encode("utf-8")  # the bytes on the wire
    headers = {"Inference-Header-Content-Length": raw}
    answer = httpx.post(f"{url}/v2/models/fake/infer", content=body_of_size(500), headers=headers)
    assert answer.status_code == 400 and "is not a byte count" in answer.json()["error"], answer.text
