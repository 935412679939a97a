"""``pih2t-bench --serve``: requests per second and p99 of pih2t-serve (and the local Triton server when
nvidia-pytriton is installed) on the ONNX artifact, driven from a separate process."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pih2t_deploy.bench.load import run_load
from pih2t_deploy.errors import UserError
from pih2t_deploy.serving.process import free_port, require_free_port, start_rest_server

logger = logging.getLogger(__name__)


def _rest(
    artifact: Path, image: Path, concurrencies: list[int], seconds: float, threads: int, port: int
) -> list[dict[str, Any]]:
    if port:
        require_free_port("127.0.0.1", port)
    else:
        port = free_port()
    server = start_rest_server(artifact, port, "--max-queue", "4096", "--threads", str(threads))
    try:
        return [run_load(f"http://127.0.0.1:{port}", c, seconds, image) for c in concurrencies]
    finally:
        server.terminate()
        server.wait(timeout=60)


def _triton(
    artifact: Path, image: Path, concurrencies: list[int], seconds: float, work: Path, threads: int
) -> list[dict[str, Any]]:
    from pih2t_deploy.runtime.loader import read_artifact_info
    from pih2t_deploy.serving.triton.repository import RepositorySettings, build_repository
    from pih2t_deploy.serving.triton.server import Ports, start_server, wait_until_ready

    build_repository(artifact, work / "repo", RepositorySettings(cpu_python=True, max_queue_delay_us=2000))
    name = read_artifact_info(artifact).name  # the ensemble is named after the artifact
    ports = Ports(free_port(), free_port(), free_port())
    server = start_server(work / "repo", ports, work / "server", log_path=work / "triton.log", threads=threads)
    try:
        wait_until_ready(server, ports)
        url = f"http://127.0.0.1:{ports.http}"
        return [run_load(url, c, seconds, image, protocol="triton", model=name) for c in concurrencies]
    finally:
        server.terminate()
        server.wait(timeout=60)


def serve_benchmark(
    artifact: Path,
    image: Path,
    concurrencies: list[int],
    seconds: float,
    log: Callable[[str], None] = logger.info,
    threads: int = 2,
    port: int = 0,
) -> dict[str, Any]:
    """{server name: [load results per concurrency]}; Triton is skipped (with the reason) when unavailable.

    Both servers get ``threads`` onnxruntime inference threads; pih2t-serve listens on ``port`` (0: a free
    one; a busy one is a UserError), Triton on free ports.
    """
    log("serving benchmark: pih2t-serve")
    results: dict[str, Any] = {"pih2t-serve": _rest(artifact, image, concurrencies, seconds, threads, port)}
    try:
        import pytriton  # noqa: F401
    except ImportError:
        results["skipped"] = {"triton": "nvidia-pytriton is not installed (pip install 'pih2t-deploy[triton]')"}
        return results
    log("serving benchmark: local Triton (Python backend ensemble)")
    with tempfile.TemporaryDirectory(prefix="pih2t-bench-triton-") as work:
        try:
            results["triton"] = _triton(artifact, image, concurrencies, seconds, Path(work), threads)
        except UserError as exc:
            results["skipped"] = {"triton": str(exc)}
    return results
