"""Running the service under uvicorn with the shutdown an orchestrator expects.

On SIGTERM the service reports not-ready at once (/v2/health/ready answers 503) and keeps answering for
``drain_s`` seconds, so a load balancer stops sending new work while nothing in flight is cut off; then
uvicorn stops accepting connections, finishes the requests it holds and the service finishes its queue.
A second signal, or Ctrl-C, skips the wait.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from pih2t_deploy.serving.log_limit import limit_repeated_logs
from pih2t_deploy.serving.service import InferenceService

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM marks ``service`` draining and exits ``drain_s`` seconds later."""

    def __init__(self, config: uvicorn.Config, service: InferenceService, drain_s: float) -> None:
        super().__init__(config)
        self.service, self.drain_s = service, drain_s
        self.exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM: not ready now, stop after the drain period; anything else: uvicorn's own rule."""
        self.service.draining = True
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
    drain_s: float = 0.0,
    max_connections: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``app`` until a signal stops it. More than ``max_connections`` open connections get 503;
    repeated error logs are rate-limited (RepeatedMessageFilter)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=30,
    )
    limit_repeated_logs("uvicorn.error", "pih2t_deploy.serving")  # after uvicorn.Config set logging up
    DrainingServer(config, app.state.service, drain_s).run()
