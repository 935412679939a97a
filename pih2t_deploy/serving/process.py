"""Starting a server process and waiting until it answers ready: one definition for the quickstart, the
benchmarks and the local Triton launcher."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pih2t_deploy.errors import UserError


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 60.0, what: str = "the server") -> None:
    """Poll ``url``/v2/health/ready until it answers 200; UserError if ``process`` exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"{what} exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise UserError(f"{what} was not ready within {timeout_s:.0f} s")


def start_rest_server(artifact: Path, port: int, *options: str) -> subprocess.Popen:
    """``pih2t-serve`` on 127.0.0.1:``port`` for ``artifact`` (extra CLI ``options``), once it is ready."""
    command = [
        sys.executable,
        "-m",
        "pih2t_deploy.cli",
        "serve",
        "--model",
        str(artifact),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *options,
    ]
    server = subprocess.Popen(command)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, timeout_s=120, what="pih2t-serve")
    except UserError:
        server.terminate()
        server.wait(timeout=30)
        raise
    return server
