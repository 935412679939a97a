"""One serving process, or several sharing one port: ``pih2t-serve --workers N``.

With N workers the parent binds the HTTP port once and starts N processes (spawned, not forked: each loads
its own copy of the model, with its own micro-batcher and decode threads) that accept connections on that
socket; their gRPC servers share the gRPC port through SO_REUSEPORT, and a worker with more inference calls
than another hands it some (``handoff.py``: the kernel spreads connections, not calls). The parent runs no
model. It passes SIGTERM and SIGINT on to every worker (each drains as a single server does), replaces a worker
that dies while serving, and stops everything, exit status 1, when a worker dies within its first
``STARTUP_GRACE_S`` seconds (a model that cannot load fails the same way every time).

With ``--grpc-front native`` (``serving/front.py``) the parent also runs the native gRPC front end on the gRPC
port, which hands every call to the least busy worker over the worker's Unix socket; the workers then run no gRPC
server and hand nothing to each other. The front end is stopped after the workers (so calls keep being answered
while they drain) and replaced, as a worker is, should it die.

/metrics sums over the workers: they write their values to files in a private folder (prometheus_client's
multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and whichever worker answers the scrape reads them all.
"""

from __future__ import annotations

import contextlib
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
    from pih2t_deploy.serving.front import FrontProcess
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
    grpc_front: Path | None = None  # the native gRPC front end program, when it takes the gRPC port


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
    front_socket: Path | None = None,
) -> None:
    """Serve ``classifier`` in this process until a signal stops it; ``sockets`` are already-listening
    sockets shared with other workers (default: bind ``spec.host``:``spec.port``), ``handoff`` this worker's
    link to them for gRPC calls, ``front_socket`` where it takes the calls of the native gRPC front end."""
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
        front_socket=front_socket,
    )


@dataclass(frozen=True)
class HandoffShare:
    """What the parent gives every worker for passing gRPC calls: the private folder of their Unix sockets and,
    when they hand calls to each other, the shared counts of calls being worked on (a RawArray, one int per
    worker); None there when the native front end hands the calls out."""

    counts: Any
    folder: Path


def _worker_main(spec: ServeSpec, listener: socket.socket, slot: int, share: HandoffShare | None) -> None:
    """A worker process: load the model, then accept on the parent's socket (a worker still loading accepts
    nothing, so it is never sent a request it would have to refuse); stop quickly if the parent disappears."""
    from pih2t_deploy.serving.handoff import Board, Handoff, socket_path

    _stop_when_parent_exits()
    handoff = front_socket = None
    if share is not None and spec.grpc_front is not None:
        front_socket = socket_path(share.folder, slot)
    elif share is not None:
        limit = spec.settings.max_upload_bytes
        handoff = Handoff(Board(share.counts), slot, share.folder, limit, spec.settings.timeout_s)
    with contextlib.suppress(KeyboardInterrupt):  # the SIGINT of a parent gone (below): no traceback to print
        serve_one(spec, load_model(spec), sockets=[listener], handoff=handoff, front_socket=front_socket)


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
        self.front: FrontProcess | None = None
        self.front_started = 0.0
        self.stopping = False
        self.failed = False

    def run(self) -> int:
        """Serve until a signal stops every worker; 0 after a clean stop, 1 when a worker (or the native gRPC
        front end) failed to start."""
        metrics_dir = tempfile.mkdtemp(prefix="pih2t-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker started below
        if self.spec.grpc_port and (self.spec.grpc_handoff or self.spec.grpc_front):
            counts = None if self.spec.grpc_front else self.context.RawArray("i", self.workers)
            self.share = HandoffShare(counts, Path(tempfile.mkdtemp(prefix="pih2t-handoff-")))  # mode 0700
        try:
            with _listen(self.spec.host, self.spec.port) as listener:
                previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
                try:
                    self._start_front()
                    for slot in range(self.workers):
                        self._start(listener, slot)
                    self._supervise(listener)
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)
                    if self.front is not None:
                        self.front.stop()
        finally:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if self.share is not None:
                shutil.rmtree(self.share.folder, ignore_errors=True)
        return 1 if self.failed else 0

    def _start_front(self) -> None:
        """Start the native gRPC front end, when the spec names one (the workers then run no gRPC server)."""
        if self.spec.grpc_front is None or self.share is None:
            return
        from pih2t_deploy.serving.front import CALL_TIMEOUT_MARGIN_S, FrontProcess
        from pih2t_deploy.serving.grpc_service import GrpcLimits
        from pih2t_deploy.serving.handoff import socket_path

        limits = GrpcLimits(self.spec.settings.max_upload_bytes, max_concurrent_rpcs=self.spec.max_connections)
        if self.front is None:
            host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
            sockets = [socket_path(self.share.folder, slot) for slot in range(self.workers)]
            self.front = FrontProcess(
                self.spec.grpc_front,
                f"{host}:{self.spec.grpc_port}",
                sockets,
                limits.max_message_bytes,
                limits.max_concurrent_rpcs,
                limits.options(),
                call_timeout_s=self.spec.settings.timeout_s + CALL_TIMEOUT_MARGIN_S,
            )
        self.front.start()
        self.front_started = time.monotonic()

    def _start(self, listener: socket.socket, slot: int) -> None:
        if self.share is not None and self.share.counts is not None:
            self.share.counts[slot] = 0  # what a worker that died in this slot was counting
        spec = replace(self.spec, grpc_port=0) if self.spec.grpc_front else self.spec  # the front end has the port
        process = self.context.Process(
            target=_worker_main, args=(spec, listener, slot, self.share), name="pih2t-serve-worker"
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
            front_exit = [self.front.exit_fd] if self.front is not None and self.front.exit_fd is not None else []
            wait([process.sentinel for process in self.processes] + front_exit, timeout=1.0)
            self._replace_front_if_exited()
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

    def _replace_front_if_exited(self) -> None:
        status = None if self.front is None else self.front.exited()
        if status is None or self.stopping:
            return
        assert self.front is not None
        self.front.stop()  # releases what it held
        if time.monotonic() - self.front_started < self.startup_grace_s:
            log.error("the gRPC front end exited with status %s while starting; stopping", status)
            self.failed = True
            self._on_signal(signal.SIGINT, None)
            return
        log.warning("the gRPC front end exited with status %s; starting another", status)
        try:
            self._start_front()
        except UserError as exc:
            log.error("%s; stopping", exc)
            self.failed = True
            self._on_signal(signal.SIGINT, None)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host/--port") from None
    listener.set_inheritable(True)
    return listener
