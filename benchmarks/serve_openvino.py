"""pih2t-serve on an OpenVINO INT8 artifact against the raw OpenVINO runtime at batch 32, in one run.

    python benchmarks/serve_openvino.py [--seconds 15] [--rounds 3] [--threads 2] [--client httpx|perf_analyzer]

Exports the folded ResNet-50 (random weights, 224, 100 classes) as openvino-int8. Each round measures, one
after the other, the compiled IR's images/s at batch 32 with ``--threads`` threads (the raw runtime), then
pih2t-serve --backend openvino with each performance hint (micro-batches up to 32, same threads) driven from a
separate client process at concurrency 32 with one 256x256 JPEG per request: Python httpx posting to
/v1/classify, or Triton's perf_analyzer (C++, set up by perf_analyzer.sh) sending the JPEG as a v2 BYTES
tensor, which leaves more of the shared cores to the server. Prints each round's served/raw and the median over
the rounds: rounds interleave the three measurements, so a machine that slows down for a while slows all three.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import jpeg_bytes
from openvino_cpu import build_artifacts
from perf_analyzer_vs_triton import measure, perf_analyzer

from pih2t_deploy.bench.load import run_load
from pih2t_deploy.runtime.openvino_backend import HINTS, IRRunner
from pih2t_deploy.serving.process import free_port, start_rest_server
from pih2t_deploy.serving.v2_codec import serialize_bytes


def raw_images_per_s(xml: Path, threads: int, seconds: float, batch: int = 32) -> float:
    run = IRRunner(xml, "f32", threads)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    run(x)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(x)
        count += batch
    return count / (time.perf_counter() - started)


def served(artifact: Path, hint: str, args: argparse.Namespace, image: Path) -> dict:
    """requests/s, p50 and p99 (ms) of pih2t-serve with performance hint ``hint`` at concurrency 32 (for
    perf_analyzer, ``image`` with suffix .json holds the request's input)."""
    port = free_port()
    server = start_rest_server(
        artifact,
        port,
        "--backend",
        "openvino",
        "--performance-hint",
        hint,
        "--threads",
        str(args.threads),
        "--max-batch",
        "32",
        "--max-queue",
        "1024",
    )
    try:
        if args.client == "perf_analyzer":
            data = image.with_suffix(".json")
            found = measure(perf_analyzer(), "pih2t_image", f"127.0.0.1:{port}", "http", 32, data, args.seconds)
            return {"throughput": found["requests_per_s"], "errors": 0, **found}
        return run_load(f"http://127.0.0.1:{port}", 32, args.seconds, image)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--client", choices=("httpx", "perf_analyzer"), default="httpx")
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {hint: [] for hint in HINTS}
    with tempfile.TemporaryDirectory(prefix="pih2t-serve-openvino-") as work:
        artifact = build_artifacts(Path(work), only=("openvino-int8",))["openvino-int8"]
        image = Path(work) / "image.jpg"
        image.write_bytes(jpeg_bytes())
        encoded = base64.b64encode(serialize_bytes([image.read_bytes()])).decode()
        image.with_suffix(".json").write_text(json.dumps({"data": [{"image": {"b64": encoded}}]}))
        for round_ in range(1, args.rounds + 1):
            raw = raw_images_per_s(artifact / "model.xml", args.threads, args.seconds)
            line = f"round {round_}: raw OpenVINO INT8 batch 32 {raw:.1f} images/s"
            for hint in HINTS:
                found = served(artifact, hint, args, image)
                ratios[hint].append(found["throughput"] / raw)
                line += (
                    f"; pih2t-serve --performance-hint {hint} ({args.client}, concurrency 32) "
                    f"{found['throughput']:.1f} requests/s (p50 {found['p50_ms']:.0f} ms, "
                    f"p99 {found['p99_ms']:.0f} ms, errors {found['errors']}), served/raw {ratios[hint][-1]:.2f}"
                )
            print(line, flush=True)
    for hint, values in ratios.items():
        print(f"--performance-hint {hint}: served/raw median {statistics.median(values):.2f} over {len(values)} rounds")


if __name__ == "__main__":
    main()
