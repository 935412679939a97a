"""Start-up time and idle memory of ``pih2t-serve`` on an exported artifact.

Starts the real ``pih2t-serve`` console script (the installed entry point, not ``python -m``) on a free
port, measures the wall time from process start until ``/v2/health/ready`` answers 200, then lets it idle
and reads its resident set size (VmRSS of the process) and whether torch got imported (``/v1/model``
reports the backend; torch's shared libraries are looked up in ``/proc/PID/maps``). Repeats ``--runs``
times and prints the median.

    python benchmarks/serve_footprint.py --model exports/digits [--runs 5] [--idle-s 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pih2t_deploy.serving.process import free_port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def one_run(command: list[str], idle_s: float) -> dict[str, float | bool]:
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"])
    try:
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"pih2t-serve exited with status {server.returncode}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        ready_s = time.perf_counter() - started
        time.sleep(idle_s)
        return {"ready_s": ready_s, "idle_rss_mb": rss_mb(server.pid), "torch_loaded": torch_loaded(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact folder from pih2t-export")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=2.0)
    args = parser.parse_args()
    script = shutil.which("pih2t-serve", path=os.path.dirname(sys.executable)) or shutil.which("pih2t-serve")
    if script is None:
        sys.exit("pih2t-serve is not installed in this environment")
    runs = [one_run([script, "--model", str(args.model)], args.idle_s) for _ in range(args.runs)]
    summary = {
        "runs": len(runs),
        "ready_s_median": round(statistics.median(r["ready_s"] for r in runs), 3),
        "idle_rss_mb_median": round(statistics.median(r["idle_rss_mb"] for r in runs), 1),
        "torch_loaded": any(r["torch_loaded"] for r in runs),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
