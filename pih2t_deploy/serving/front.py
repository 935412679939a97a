"""The native gRPC front end of ``pih2t-serve --grpc-front native``: finding, starting and stopping the
``pih2t-grpc-front`` program (``native/grpc_front/front.cc``, built by ``make grpc-front``).

The program takes every gRPC call on the gRPC port in gRPC's own C++ server and hands it to the worker working
on the fewest calls, over that worker's Unix socket (``serving/handoff.py``'s frames, kind CALL); the workers run
no gRPC server of their own. So HTTP/2 costs the workers' event loops nothing, and calls, not connections, are
spread over the workers.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from pih2t_deploy.errors import ConfigError, UserError

log = logging.getLogger(__name__)

PROGRAM = "pih2t-grpc-front"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0  # the program lets calls in progress finish for up to 5 s
# a worker answers DEADLINE_EXCEEDED itself at --timeout-s; the front end's own deadline, for a worker that does
# not answer at all, is this much later
CALL_TIMEOUT_MARGIN_S = 5.0
MESSAGE_LIMITS = ("grpc.max_receive_message_length", "grpc.max_send_message_length")  # --max-message-bytes sets both


def find_front() -> Path:
    """The ``pih2t-grpc-front`` program: beside this Python's executable (where ``make grpc-front`` puts it) or
    on PATH; ConfigError saying how to build it when there is none."""
    beside = Path(sys.executable).parent / PROGRAM
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(PROGRAM)
    if found is None:
        raise ConfigError(
            f"--grpc-front native needs the {PROGRAM} program, which is not built here; build it with "
            "`make grpc-front` (needs g++ and gRPC's C++ library: apt-get install libgrpc++-dev pkg-config)"
        )
    return Path(found)


class FrontProcess:
    """One running ``pih2t-grpc-front``, listening on ``address`` and handing calls to the workers' ``sockets``;
    a call a worker leaves unanswered for ``call_timeout_s`` gets DEADLINE_EXCEEDED (a hung worker)."""

    def __init__(
        self,
        program: Path,
        address: str,
        sockets: list[Path],
        max_message_bytes: int,
        max_in_flight: int,
        channel_args: Iterable[tuple[str, int]],
        call_timeout_s: float = 60.0,
    ) -> None:
        self.command = [str(program), "--listen", address, "--max-message-bytes", str(max_message_bytes)]
        self.command += ["--max-in-flight", str(max_in_flight), "--call-timeout-ms", str(round(call_timeout_s * 1000))]
        for path in sockets:
            self.command += ["--worker", str(path)]
        for name, value in channel_args:
            if name not in MESSAGE_LIMITS:
                self.command += ["--arg", f"{name}={value}"]
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_fd: int | None = None

    def start(self) -> None:
        """Start the program and return once it listens; UserError with its own reason when it cannot."""
        process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        line = process.stdout.readline().decode(errors="replace") if ready else ""
        process.stdout.close()
        if not line.startswith("listening on "):
            process.kill()
            said = process.communicate(timeout=STOP_TIMEOUT_S)[1].decode(errors="replace").strip().splitlines()
            reason = said[-1] if said else "no reason given"  # its own line comes last, after gRPC's log
            raise UserError(f"the gRPC front end did not start on {self.address}: {reason}")
        threading.Thread(target=_log_lines, args=(process.stderr,), name="grpc-front-log", daemon=True).start()
        self.process, self.exit_fd = process, os.pidfd_open(process.pid)

    def exited(self) -> int | None:
        """The program's exit status once it has exited, else None."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        """SIGTERM, then wait (calls in progress finish first); SIGKILL if it does not end in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.exit_fd is not None:
            os.close(self.exit_fd)
        self.process = self.exit_fd = None


def _log_lines(stream: Iterable[bytes]) -> None:
    for line in stream:
        log.warning("gRPC front end: %s", line.decode(errors="replace").rstrip())
