"""One serving process, or several sharing one port: ``pih2t-serve --workers N``.

With N workers the parent binds the HTTP port once and starts N processes (spawned, not forked: each loads
its own copy of the model, with its own micro-batcher and decode threads) that accept connections on that
socket; their gRPC servers share the gRPC port through SO_REUSEPORT, and a worker with more inference calls
than another hands it some (``handoff.py``: the kernel spreads connections, not calls). The parent runs no
model. It passes SIGTERM and SIGINT on to every worker (each drains as a single server does), replaces a worker
that dies while serving, and stops everything, exit status 1, when a worker dies within its first
``STARTUP_GRACE_S`` seconds (a model that cannot load fails the same way every time).

/metrics sums over the workers: they write their values to files in a private folder (prometheus_client's
multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and whichever worker answers the scrape reads them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from pih2t_deploy.errors import UserError
from pih2t_deploy.serving.settings import ServeSettings

if TYPE_CHECKING:
    from pih2t_deploy.runtime import Classifier
    from pih2t_deploy.runtime.loader import BackendName, PerformanceHint
    from pih2t_deploy.serving.handoff import Handoff

log = logging.getLogger(__name__)

STARTUP_GRACE_S = 15.0  # a worker that dies sooner never started serving: stop rather than restart it forever
BACKLOG = 2048  # uvicorn's default listen backlog


@dataclass(frozen=True)
class ServeSpec:
    """Everything one serving process needs, picklable so that a spawned worker receives it whole."""

    model: Path
    backend: str
    device: str
    threads: int | None
    name: str | None
    settings: ServeSettings
    host: str
    port: int
    grpc_port: int
    drain_s: float
    header_timeout_s: float
    max_connections: int
    log_level: str
    performance_hint: PerformanceHint = "latency"
    grpc_handoff: bool = True


def threads_per_worker(threads: int | None, workers: int) -> int | None:
    """The inference threads each of ``workers`` processes gets: ``threads`` when given, else the CPUs this
    process may use divided evenly (at least one), so that N workers do not oversubscribe the cores."""
    if threads is not None or workers == 1:
        return threads
    return max(1, len(os.sched_getaffinity(0)) // workers)


def load_model(spec: ServeSpec) -> Classifier:
    """The classifier ``spec`` names, loaded with its backend, device, threads and performance hint."""
    from pih2t_deploy.runtime import load_classifier

    backend = cast("BackendName", spec.backend)
    return load_classifier(
        spec.model,
        backend,
        device=spec.device,
        threads=spec.threads,
        name=spec.name,
        performance_hint=spec.performance_hint,
    )


def serve_one(
    spec: ServeSpec,
    classifier: Classifier,
    sockets: list[socket.socket] | None = None,
    handoff: Handoff | None = None,
) -> None:
    """Serve ``classifier`` in this process until a signal stops it; ``sockets`` are already-listening
    sockets shared with other workers (default: bind ``spec.host``:``spec.port``), ``handoff`` this worker's
    link to them for gRPC calls."""
    from pih2t_deploy.serving.rest import create_app
    from pih2t_deploy.serving.runner import run_service

    run_service(
        create_app(lambda: classifier, spec.settings),
        spec.host,
        spec.port,
        grpc_port=spec.grpc_port,
        drain_s=spec.drain_s,
        header_timeout_s=spec.header_timeout_s,
        max_connections=spec.max_connections,
        log_level=spec.log_level,
        sockets=sockets,
        handoff=handoff,
    )


@dataclass(frozen=True)
class HandoffShare:
    """What the parent gives every worker for handing gRPC calls around: the shared counts of calls being
    worked on (a RawArray, one int per worker) and the private folder of their Unix sockets."""

    counts: Any
    folder: Path


def _worker_main(spec: ServeSpec, listener: socket.socket, slot: int, share: HandoffShare | None) -> None:
    """A worker process: load the model, then accept on the parent's socket (a worker still loading accepts
    nothing, so it is never sent a request it would have to refuse); stop quickly if the parent disappears."""
    _stop_when_parent_exits()
    handoff = None
    if share is not None:
        from pih2t_deploy.serving.handoff import Board, Handoff

        limit = spec.settings.max_upload_bytes
        handoff = Handoff(Board(share.counts), slot, share.folder, limit, spec.settings.timeout_s)
    serve_one(spec, load_model(spec), sockets=[listener], handoff=handoff)


def _stop_when_parent_exits() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGINT)  # no drain: nobody is left to route traffic away first

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class WorkerPool:
    """The parent of ``workers`` serving processes on one port (see the module docstring)."""

    def __init__(self, spec: ServeSpec, workers: int, startup_grace_s: float = STARTUP_GRACE_S) -> None:
        self.spec = replace(spec, settings=replace(spec.settings, server_pid=os.getpid()))
        self.workers, self.startup_grace_s = workers, startup_grace_s
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[BaseProcess, tuple[float, int]] = {}  # process -> when it started, its slot
        self.share: HandoffShare | None = None
        self.stopping = False
        self.failed = False

    def run(self) -> int:
        """Serve until a signal stops every worker; 0 after a clean stop, 1 when a worker failed to start."""
        metrics_dir = tempfile.mkdtemp(prefix="pih2t-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker started below
        if self.spec.grpc_port and self.spec.grpc_handoff:
            counts = self.context.RawArray("i", self.workers)
            self.share = HandoffShare(counts, Path(tempfile.mkdtemp(prefix="pih2t-handoff-")))  # mode 0700
        try:
            with _listen(self.spec.host, self.spec.port) as listener:
                previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
                try:
                    for slot in range(self.workers):
                        self._start(listener, slot)
                    self._supervise(listener)
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)
        finally:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if self.share is not None:
                shutil.rmtree(self.share.folder, ignore_errors=True)
        return 1 if self.failed else 0

    def _start(self, listener: socket.socket, slot: int) -> None:
        if self.share is not None:
            self.share.counts[slot] = 0  # what a worker that died in this slot was counting
        process = self.context.Process(
            target=_worker_main, args=(self.spec, listener, slot, self.share), name="pih2t-serve-worker"
        )
        process.start()
        self.processes[process] = time.monotonic(), slot

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, sig)

    def _supervise(self, listener: socket.socket) -> None:
        from prometheus_client import multiprocess

        while self.processes:
            wait([process.sentinel for process in self.processes], timeout=1.0)
            for process, (started, slot) in list(self.processes.items()):
                if process.exitcode is None:
                    continue
                del self.processes[process]
                if process.pid is not None:
                    multiprocess.mark_process_dead(process.pid)  # its live gauges (in-flight, queue) leave the sums
                if self.stopping:
                    continue
                if time.monotonic() - started < self.startup_grace_s:
                    log.error("worker %s exited with status %s while starting; stopping", process.pid, process.exitcode)
                    self.failed = True
                    self._on_signal(signal.SIGINT, None)
                else:
                    log.warning("worker %s exited with status %s; starting another", process.pid, process.exitcode)
                    self._start(listener, slot)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host/--port") from None
    listener.set_inheritable(True)
    return listener
