"""``pih2t-triton serve``: the tritonserver binary shipped by nvidia-pytriton, on 127.0.0.1, for local use.

That build has only the Python backend, so serve repositories built with ``--cpu-python``. The launcher
copies the binary's folders into a work folder with the Python-backend stub of this interpreter, puts this
interpreter's libpython first on LD_LIBRARY_PATH (else the stub loads an older system libpython) and sets
PYTHONPATH so the stub finds numpy, onnxruntime and pih2t_deploy.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pih2t_deploy.errors import UserError
from pih2t_deploy.serving.process import wait_ready


@dataclass(frozen=True)
class Ports:
    """HTTP, gRPC and metrics ports."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def _distribution() -> Path:
    try:
        import pytriton
    except ImportError:
        raise UserError("the local Triton server needs nvidia-pytriton: pip install 'pih2t-deploy[triton]'") from None
    folder = Path(pytriton.__file__).parent / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise UserError(f"nvidia-pytriton at {folder} has no tritonserver binary")
    return folder


def prepare_server(work: Path) -> Path:
    """Lay out bin/, backends/ (with this Python's stub) and caches/ under ``work``; return the binary."""
    dist = _distribution()
    for part in ("bin", "backends", "caches"):
        shutil.copytree(dist / part, work / part, dirs_exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    shutil.copy2(stub, work / "backends" / "python" / "triton_python_backend_stub")
    return work / "bin" / "tritonserver"


def server_environment(threads: int = 1) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs."""
    env = dict(os.environ)
    libs = [str(Path(sysconfig.get_config_var("LIBDIR") or ".").resolve())]
    pytriton_libs = Path(_distribution()).parent.parent / "nvidia_pytriton.libs"
    if pytriton_libs.is_dir():
        libs.append(str(pytriton_libs))
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    paths = [str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()]  # the stub runs elsewhere
    env["PYTHONPATH"] = ":".join([*paths, env.get("PYTHONPATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the stub takes its Python from PATH
    env["PIH2T_TRITON_THREADS"] = str(threads)
    return env


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when the process that started it dies, so a
    tritonserver never outlives a launcher that was killed outright (SIGKILL, a crash)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_server(
    repo: Path, ports: Ports, work: Path, *, log_path: Path | None = None, exit_timeout_s: int = 5, threads: int = 1
) -> subprocess.Popen:
    """Start tritonserver on 127.0.0.1 serving ``repo``; the caller waits for readiness and stops it. The
    server runs in its own session (a terminal's Ctrl-C reaches only the caller, which decides) and gets
    SIGTERM if the caller dies."""
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise UserError(f"model repository {repo} does not exist")
    binary = prepare_server(work)
    command = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={work / 'backends'}",
        f"--cache-directory={work / 'caches'}",
        "--http-address=127.0.0.1",
        f"--http-port={ports.http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={ports.grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        f"--exit-timeout-secs={exit_timeout_s}",
        "--strict-readiness=true",
        "--log-verbose=0",
        # a CPU-only server: no pinned (CUDA host) memory pool and no GPU metrics, so no CUDA or NVML errors
        "--pinned-memory-pool-byte-size=0",
        "--allow-gpu-metrics=false",
    ]
    output = open(log_path, "wb") if log_path else None  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        command,
        env=server_environment(threads),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
    )


def wait_until_ready(process: subprocess.Popen, ports: Ports, timeout_s: float = 120.0) -> None:
    """Poll /v2/health/ready until 200; UserError if the server exits or time runs out."""
    wait_ready(f"http://127.0.0.1:{ports.http}", process, timeout_s, what="tritonserver")


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve_forever(repo: Path, ports: Ports) -> int:
    """Run tritonserver in the foreground until it exits; returns its exit status. SIGTERM, SIGINT (Ctrl-C)
    and SIGHUP sent to this process are passed on to tritonserver, which shuts down gracefully and is waited
    for; its work folder is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pih2t-triton-") as work:
        process = start_server(repo, ports, Path(work))

        def forward(signum: int, _frame: object) -> None:
            process.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
        try:
            return process.wait()  # resumes after each forwarded signal until tritonserver has exited
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if process.poll() is None:
                process.kill()
                process.wait()
