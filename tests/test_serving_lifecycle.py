"""pih2t-serve as an orchestrator and hostile clients see it: settings refused before start, slow bodies
(408), a connection cap (503), SIGTERM draining, the OpenAPI document and /docs without the internet."""

from __future__ import annotations

import io
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import free_port, start_rest_server
from pih2t_deploy.serving.rest import create_app
from pih2t_deploy.serving.settings import ServeSettings
from tests import images
from tests.browser import headless_chromium
from tests.helpers import kill_if_running, run_cli
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


def test_headers_that_trickle_get_408_and_the_connection_is_closed(digits_artifact):
    """A client that opens a request and sends one header line (slowloris), or nothing at all, is answered
    408 once --header-timeout-s passes, instead of holding its connection for as long as it likes."""
    port = free_port()
    server = start_rest_server(digits_artifact[1], port, "--header-timeout-s", "1")
    try:
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        silent = socket.create_connection(("127.0.0.1", port))
        for sock in (partial, silent):
            sock.settimeout(10)
            answer = b"".join(iter(lambda s=sock: s.recv(4096), b"")).decode()
            assert answer.startswith("HTTP/1.1 408 Request Timeout"), answer
            assert answer.endswith('{"error": "the request headers did not arrive within 1 s"}'), answer
            sock.close()
        good = httpx.post(f"http://127.0.0.1:{port}/v1/classify", files={"file": ("x.png", images.sample(2))})
        assert good.status_code == 200 and good.json()["results"][0]["predictions"][0]["label"] == "2"
    finally:
        server.terminate()
        server.wait(timeout=30)


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
        kill_if_running(server)


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


def _peak_rss_mb(pid: int) -> float:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024


def test_requests_of_sixteen_huge_pngs_are_refused_from_their_headers_and_memory_stays_flat(digits_artifact):
    """The attack of issue #13: sixteen 6324x6324 PNGs in one request (1.9 MB on the wire, 640 million pixels
    decoded) took 2.4 GB. Now the headers are summed first: 413 with the limit, and the server's peak memory
    grows by less than one decoded image (40 MB) over ten such requests."""
    huge = io.BytesIO()
    Image.new("L", (6324, 6324)).save(huge, format="PNG")
    files = [("files", (f"{i}.png", huge.getvalue(), "image/png")) for i in range(16)]
    port = free_port()
    server = start_rest_server(digits_artifact[1], port)
    try:
        before = _peak_rss_mb(server.pid)
        for _ in range(10):
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", files=files, timeout=60)
            assert answer.status_code == 413, answer.text
            assert "hold 639,887,616 pixels; the limit per request is 80,000,000" in answer.json()["error"]
        grown = _peak_rss_mb(server.pid) - before
        assert grown < 40, f"peak memory grew by {grown:.0f} MB"
        good = httpx.post(f"http://127.0.0.1:{port}/v1/classify", files={"file": ("x.png", images.sample(2))})
        assert good.status_code == 200 and good.json()["results"][0]["predictions"][0]["label"] == "2"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_flood_of_bad_connections_logs_a_few_lines_not_one_per_connection(digits_artifact, tmp_path):
    """Two hundred connections that send garbage instead of HTTP: each gets 400, and the server's log holds
    the warning a handful of times (rate-limited), not two hundred."""
    import subprocess
    import sys

    from pih2t_deploy.serving.process import wait_ready

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "pih2t_deploy.cli", "serve", "--model", str(digits_artifact[1]),
             "--port", str(port), "--grpc-port", "0", "--log-level", "warning"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
                sock.settimeout(10)
                assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [line for line in log.read_text().splitlines() if "Invalid HTTP request received" in line]
    assert 1 <= len(lines) <= 5, len(lines)
