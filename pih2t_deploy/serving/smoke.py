"""Start pih2t-serve on an artifact, classify images through the REST API, print the answers, stop it.

Used by ``make quickstart``; exits non-zero if the server does not become ready or a request fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Poll ``url``/v2/health/ready until 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    command = [
        sys.executable,
        "-m",
        "pih2t_deploy.cli",
        "serve",
        "--model",
        str(args.model),
        "--port",
        str(args.port),
        "--log-level",
        "warning",
    ]
    print("$ " + " ".join(command), flush=True)
    server = subprocess.Popen(command)
    try:
        wait_ready(url, server)
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in args.images]
        print(f"$ curl -F files=@{args.images[0].name} ... '{url}/v1/classify?top_k=3'", flush=True)
        answer = httpx.post(f"{url}/v1/classify", params={"top_k": 3}, files=files, timeout=30.0)
        answer.raise_for_status()
        body = answer.json()
        correct = 0
        for result in body["results"]:
            best = result["predictions"][0]
            expected = result["filename"].removeprefix("digit_").removesuffix(".png")
            correct += best["label"] == expected
            print(f"  {result['filename']:<12} -> {best['label']} ({best['score']:.1%})")
        print(f"{correct}/{len(body['results'])} sample images classified correctly by model {body['model']}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
