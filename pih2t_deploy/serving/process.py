"""Starting a server process and waiting until it answers ready: one definition for the quickstart, the
benchmarks and the local Triton launcher."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from pathlib import Path

from pih2t_deploy.errors import UserError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def require_free_port(host: str, port: int) -> None:
    """Check that a server can listen on ``host``:``port`` before it loads anything; a UserError (exit 2, one
    line) naming the port and a free alternative when another program holds it or the address is unusable."""
    try:
        family, _type, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"--host {host} is not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gradio bind
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"--port {port}: {host}:{port} is already in use by another program; stop it or choose "
                    f"another port (e.g. --port {free_port()})"
                ) from None
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host/--port") from None


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
    """``pih2t-serve`` on 127.0.0.1:``port`` for ``artifact`` (extra CLI ``options``; gRPC off unless they
    give --grpc-port), once it is ready and known to be the process that answers there."""
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
        "--expose-process-info",  # its process id tells it apart from another server on the port
        *([] if "--grpc-port" in options else ["--grpc-port", "0"]),
        *options,
    ]
    server = subprocess.Popen(command)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, timeout_s=120, what="pih2t-serve")
        _require_same_process(f"http://127.0.0.1:{port}", server)
    except UserError:
        server.terminate()
        server.wait(timeout=30)
        raise
    return server


def _require_same_process(url: str, server: subprocess.Popen) -> None:
    """The server answering at ``url`` must be the process just started, not another one on that port."""
    import httpx

    answered = httpx.get(f"{url}/v1/model", timeout=10.0).json().get("pid")
    if answered != server.pid:
        raise UserError(f"another server answers at {url} (process {answered}, not {server.pid}); use a free port")
