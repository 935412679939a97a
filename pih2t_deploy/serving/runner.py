"""Running the service under uvicorn with the shutdown an orchestrator expects.

On SIGTERM the service reports not-ready at once (/v2/health/ready answers 503) and keeps answering for
``drain_s`` seconds, so a load balancer stops sending new work while nothing in flight is cut off; then
uvicorn stops accepting connections, finishes the requests it holds and the service finishes its queue.
A second signal, or Ctrl-C, skips the wait. The gRPC server (when enabled) runs on the same event loop and
the same service, and stops after HTTP, letting its in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from pih2t_deploy.serving.dataplane import DataPlane
from pih2t_deploy.serving.header_deadline import header_deadline_protocol
from pih2t_deploy.serving.log_limit import limit_repeated_logs

if TYPE_CHECKING:
    from pih2t_deploy.serving.handoff import Handoff

log = logging.getLogger(__name__)

GC_THRESHOLD = 50_000  # allocations between young-generation collections (CPython's default is 700)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM marks ``plane`` draining and exits ``drain_s`` seconds later."""

    def __init__(self, config: uvicorn.Config, plane: DataPlane, drain_s: float) -> None:
        super().__init__(config)
        self.plane, self.drain_s = plane, drain_s
        self.exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM: not ready now, stop after the drain period; anything else: uvicorn's own rule."""
        self.plane.draining = True
        if sig == signal.SIGTERM and self.exit_at is None and self.drain_s > 0:
            self.exit_at = time.monotonic() + self.drain_s
            self._captured_signals.append(sig)
            log.warning("SIGTERM: not ready; draining for %.1f s before shutting down", self.drain_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's periodic check, which also ends the drain period."""
        if self.exit_at is not None and time.monotonic() >= self.exit_at:
            return True
        return await super().on_tick(counter)


def run_service(
    app: FastAPI,
    host: str,
    port: int,
    *,
    grpc_port: int = 0,
    drain_s: float = 0.0,
    header_timeout_s: float = 10.0,
    max_connections: int | None = None,
    log_level: str = "info",
    sockets: list[socket.socket] | None = None,
    handoff: Handoff | None = None,
    front_socket: Path | None = None,
) -> None:
    """Serve ``app`` over HTTP, and over gRPC on ``grpc_port`` unless it is 0, until a signal stops it. More
        than ``max_connections`` open HTTP connections get 503, request headers slower than ``header_timeout_s``
        get 408; repeated error logs are rate-limited. ``sockets``: already-listening sockets to accept on
    (a worker of ``pih2t-serve --workers``) instead of binding ``host``:``port``; ``handoff``: such a worker's
    link to the others, which gRPC inference calls may be handed to (``serving/handoff.py``); ``front_socket``:
    the Unix socket where a worker of ``--grpc-front native`` takes the gRPC calls the front end hands it."""
    config = uvicorn.Config(
        app,
        http=header_deadline_protocol(header_timeout_s),
        host=host,
        port=port,
        log_level=log_level,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=30,
    )
    limit_repeated_logs("uvicorn.error", "pih2t_deploy.serving")  # after uvicorn.Config set logging up
    # fewer, cheaper garbage collections: each request allocates many short-lived objects, and a full
    # collection over the long-lived ones (the model, the libraries) shows up as tail latency
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    plane = app.state.plane
    server = DrainingServer(config, plane, drain_s)

    async def serve() -> None:
        grpc_server = front_calls = None
        if grpc_port:
            from pih2t_deploy.serving.grpc_service import GrpcLimits, start_grpc_server

            limits = GrpcLimits(plane.settings.max_upload_bytes, max_concurrent_rpcs=max_connections or 1000)
            grpc_server = await start_grpc_server(plane, f"{host}:{grpc_port}", limits, handoff)
        if front_socket is not None:
            from pih2t_deploy.serving.grpc_service import serve_front_calls

            front_calls = await serve_front_calls(plane, front_socket, plane.settings.max_upload_bytes)
        try:
            await server.serve(sockets=sockets)
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            if front_calls is not None:
                front_calls.close()
            if handoff is not None:
                await handoff.close()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
