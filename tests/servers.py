"""Real uvicorn servers on 127.0.0.1 (an ephemeral port) running in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn


@contextmanager
def running_server(app, ready_timeout: float = 30.0, wait_ready: bool = True) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve ``app`` on 127.0.0.1:<free port>; yields (base URL, server) and shuts it down afterwards."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    while wait_ready and httpx.get(f"{url}/v2/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        time.sleep(0.02)
    try:
        yield url, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
