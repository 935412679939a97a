"""Triton benchmark: the local Triton server (nvidia-pytriton's binary, Python-backend ensemble: preprocess ->
onnxruntime) beside pih2t-serve, on the same ResNet-50 artifact, in the same run.

Clients run in a separate process (pih2t_deploy.bench.load) and post one 256x256 JPEG per request: to the
ensemble's BYTES input for Triton, to /v1/classify for pih2t-serve. Concurrency 1, 8 and 32.

    python benchmarks/triton_vs_rest.py [--seconds 20] [--output runs/bench-triton]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_common import jpeg_bytes, resnet50_artifact

from pih2t_deploy.bench.serve_load import serve_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-triton"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        artifact = resnet50_artifact(Path(work))
        image = Path(work) / "image.jpg"
        image.write_bytes(jpeg_bytes())
        results = serve_benchmark(artifact, image, [1, 8, 32], args.seconds, log=print)
    print("\n| server | concurrency | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for server in ("pih2t-serve", "triton"):
        for row in results.get(server, []):
            print(
                f"| {server} | {row['concurrency']} | {row['throughput']:.1f} | {row['p50_ms']:.0f} | "
                f"{row['p99_ms']:.0f} | {row['errors']} |"
            )
    if "triton" in results:
        ratios = [
            t["throughput"] / r["throughput"] for t, r in zip(results["triton"], results["pih2t-serve"], strict=True)
        ]
        print("Triton / pih2t-serve requests/s at 1, 8, 32: " + ", ".join(f"{x:.2f}" for x in ratios))
        results["triton_over_rest"] = ratios
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "triton.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
