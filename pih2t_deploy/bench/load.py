"""HTTP load generation from a separate process: concurrent clients for a bounded time, latency statistics.

``python -m pih2t_deploy.bench.load URL --concurrency N --seconds T --image FILE [--protocol rest|triton]``
prints one JSON line; ``run_load`` starts that process and parses it, so the server under test never shares
an interpreter (or CPU scheduling quirks of one) with its clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path


async def drive(url: str, concurrency: int, seconds: float, payload: bytes, path: str, model: str) -> dict:
    """Send requests from ``concurrency`` workers until ``seconds`` pass; count successes, errors, latencies."""
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    triton_body = None
    if path == "triton":
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(payload) + 4},
                    }
                ],
                "outputs": [{"name": "logits", "parameters": {"classification": 5, "binary_data": False}}],
            }
        )
        triton_body = header.encode() + len(payload).to_bytes(4, "little") + payload

    async def one(client: httpx.AsyncClient) -> bool:
        if triton_body is not None:
            answer = await client.post(
                f"{url}/v2/models/{model}/infer",
                content=triton_body,
                headers={"Inference-Header-Content-Length": str(len(triton_body) - len(payload) - 4)},
            )
        else:
            answer = await client.post(f"{url}/v1/classify", files={"file": ("image", payload)})
        return answer.status_code == 200

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                ok = await one(client)
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def run_load(
    url: str, concurrency: int, seconds: float, image: Path, protocol: str = "rest", model: str = "digits-lt"
) -> dict:
    """Run ``drive`` in a separate Python process and return its summary."""
    command = [
        sys.executable,
        "-m",
        "pih2t_deploy.bench.load",
        url,
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--image",
        str(image),
        "--protocol",
        protocol,
        "--model",
        model,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--protocol", choices=("rest", "triton"), default="rest")
    parser.add_argument("--model", default="digits-lt")
    args = parser.parse_args()
    summary = asyncio.run(
        drive(args.url, args.concurrency, args.seconds, args.image.read_bytes(), args.protocol, args.model)
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
