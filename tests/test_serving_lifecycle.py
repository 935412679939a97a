"""pih2t-serve as an orchestrator and hostile clients see it: settings refused before start, slow bodies
(408), a connection cap (503), SIGTERM draining, the OpenAPI document and /docs without the internet."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import free_port, start_rest_server
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.service import ServeSettings
from tests import images
from tests.browser import headless_chromium
from tests.helpers import run_cli
from tests.servers import running_server


@pytest.fixture(scope="module")
def classifier(digits_artifact):
    return load_classifier(digits_artifact[1])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_batch": 0}, "--max-batch must be a whole number >= 1, got 0"),
        ({"max_wait_ms": -1.0}, "--max-wait-ms must be a number >= 0, got -1.0"),
        ({"timeout_s": 0}, "--timeout-s must be a number > 0, got 0"),
        ({"body_timeout_s": float("nan")}, "--body-timeout-s must be a number > 0, got nan"),
        ({"max_queue": True}, "--max-queue must be a whole number >= 1, got True"),
    ],
)
def test_a_bad_setting_is_refused_before_any_server_exists(classifier, setting, message):
    """Before: a bad setting given to create_app left a server that was live but never ready."""
    with pytest.raises(ConfigError) as refused:
        create_app(lambda: classifier, ServeSettings(**setting))
    assert str(refused.value) == message


def test_the_serve_command_reports_a_bad_setting_in_one_line(digits_artifact):
    done = run_cli("serve", "--model", str(digits_artifact[1]), "--max-wait-ms", "-1", "--port", str(free_port()))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --max-wait-ms must be a number >= 0, got -1.0"
    ], done.stderr


def _trickle(url: str, declared: int, sent: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"{" * sent)
    return sock


def test_a_body_that_trickles_gets_408_and_good_requests_are_still_answered(classifier):
    """A client announces 9 MB and sends 1 KB: the server answers 408 once the body deadline passes (instead
    of holding the connection for as long as the client likes) and keeps answering other clients."""
    with running_server(create_app(lambda: classifier, ServeSettings(body_timeout_s=1.0))) as (url, _):
        slow = [_trickle(url, 9_000_000, 1024) for _ in range(5)]
        try:
            good = httpx.post(f"{url}/v1/classify", files={"file": ("x.png", images.sample(4))}, timeout=10)
            assert good.status_code == 200 and good.json()["results"][0]["predictions"][0]["label"] == "4"
            for sock in slow:
                sock.settimeout(10)
                answer = b"".join(iter(lambda s=sock: s.recv(4096), b"")).decode()  # until the server closes
                assert answer.startswith("HTTP/1.1 408"), answer
                assert '{"error": "the request body did not arrive within 1 s"}' in answer
        finally:
            for sock in slow:
                sock.close()


def test_connections_over_the_cap_get_503(digits_artifact):
    port = free_port()
    server = start_rest_server(digits_artifact[1], port, "--max-connections", "3")
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.3)
        over = httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=10)
        assert over.status_code == 503
        for sock in held:
            sock.close()
        held = []
        time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        server.wait(timeout=30)


def test_sigterm_makes_the_server_not_ready_at_once_while_it_keeps_answering_then_exits(digits_artifact):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_rest_server(digits_artifact[1], port, "--drain-s", "3")
    try:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(f"{url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        during = httpx.post(f"{url}/v1/classify", files={"file": ("x.png", images.sample(7))}, timeout=10)
        assert during.status_code == 200 and during.json()["results"][0]["predictions"][0]["label"] == "7"
        assert server.poll() is None
        server.wait(timeout=30)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/v2/health/live", timeout=2)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_openapi_documents_every_status_and_the_infer_request_body(classifier):
    with running_server(create_app(lambda: classifier)) as (url, _):
        spec = httpx.get(f"{url}/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = spec["paths"][path]["post"]
        assert {"200", "400", "404", "413", "415", "503", "504"} <= set(operation["responses"]), path
        body = operation["requestBody"]["content"]
        assert body["application/json"]["schema"]["required"] == ["inputs"]
        assert "application/octet-stream" in body
    classify = spec["paths"]["/v1/classify"]["post"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(classify["responses"])
    for path in ("/v2/models/{name}", "/v2/models/{name}/config", "/v2/models/{name}/ready"):
        assert {"200", "404", "503"} <= set(spec["paths"][path]["get"]["responses"]), path


def test_docs_render_in_a_browser_from_the_server_alone(classifier, tmp_path):
    """/docs loads Swagger UI's script and styles from this server (no CDN), and a real Chromium renders
    every operation of the API from them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(create_app(lambda: classifier)) as (url, _):
        page = httpx.get(f"{url}/docs").text
        assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
        script = httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 500_000
        assert "/docs-assets/redoc.standalone.js" in httpx.get(f"{url}/redoc").text
        with headless_chromium(tmp_path / "profile") as driver:
            driver.get(f"{url}/docs")
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
            paths = {
                e.text.replace("\u200b", "") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            }
    assert {"/v1/classify", "/v2/models/{name}/infer", "/v2/health/ready"} <= paths, paths
