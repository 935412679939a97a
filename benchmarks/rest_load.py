"""REST load benchmark: pih2t-serve under concurrent clients, against raw onnxruntime, with and without batching.

Builds a resnet50 PI-H2T artifact (random weights, 100 classes, 224x224), measures raw onnxruntime throughput
at batch 32, then starts pih2t-serve (micro-batching up to 32, and batch-1 serving for comparison) and drives
it from a separate client process (httpx async) at concurrency 1, 8 and 32 for a bounded time: throughput,
p50/p99 latency, errors, server RSS before/after; finally a soak at concurrency 32 with RSS growth.

    python benchmarks/rest_load.py [--seconds 20] [--soak-seconds 120] [--output runs/bench-rest]

The clients run in a separate process (pih2t_deploy.bench.load).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import jpeg_bytes, resnet50_artifact

from pih2t_deploy.bench.load import rss_mb, run_load
from pih2t_deploy.serving.process import start_rest_server

SERVER_THREADS = 2


def raw_throughput(model: Path, batch: int, seconds: float = 10.0) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = SERVER_THREADS, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    session.run(None, {"input": x})
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"input": x})
        count += batch
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--soak-seconds", type=float, default=120.0)
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-rest"))
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    report: dict = {"server_threads": SERVER_THREADS, "runs": {}}
    with tempfile.TemporaryDirectory() as work:
        artifact = resnet50_artifact(Path(work))
        image = Path(work) / "image.jpg"
        image.write_bytes(jpeg_bytes())
        report["raw_onnxruntime_batch32_images_per_s"] = raw_throughput(artifact / "model.onnx", 32)
        for label, max_batch in (("micro-batching (max 32)", 32), ("batch-1 serving", 1)):
            server = start_rest_server(
                artifact,
                args.port,
                "--max-batch",
                str(max_batch),
                "--max-wait-ms",
                "10",
                "--threads",
                str(SERVER_THREADS),
                "--max-queue",
                "1024",
            )
            try:
                rows = []
                for concurrency in (1, 8, 32):
                    before = rss_mb(server.pid)
                    row = run_load(url, concurrency, args.seconds, image)
                    row.update(rss_before_mb=before, rss_after_mb=rss_mb(server.pid))
                    rows.append(row)
                    print(label, row, flush=True)
                report["runs"][label] = rows
                if max_batch == 32 and args.soak_seconds > 0:
                    before = rss_mb(server.pid)
                    soak = run_load(url, 32, args.soak_seconds, image)
                    soak.update(rss_before_mb=before, rss_after_mb=rss_mb(server.pid))
                    soak["rss_growth"] = soak["rss_after_mb"] / before - 1
                    report["soak"] = soak
                    print("soak", soak, flush=True)
            finally:
                server.terminate()
                server.wait(timeout=60)
    batched = report["runs"]["micro-batching (max 32)"][2]["throughput"]
    single = report["runs"]["batch-1 serving"][2]["throughput"]
    report["served_over_raw_at_32"] = batched / report["raw_onnxruntime_batch32_images_per_s"]
    report["batching_gain_at_32"] = batched / single
    print(
        f"\nraw onnxruntime batch 32: {report['raw_onnxruntime_batch32_images_per_s']:.1f} img/s; served at "
        f"concurrency 32: {batched:.1f} req/s (ratio {report['served_over_raw_at_32']:.2f}); "
        f"micro-batching gain over batch-1 serving: {report['batching_gain_at_32']:.2f}x"
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "rest_load.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
