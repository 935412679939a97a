"""Export benchmark: is the folded model free, and how much faster are onnxruntime fp32 and INT8?

For resnet32 (32x32) and resnet50 (224x224), in one process and interleaved (each candidate about 0.5 s per
round, 5-7 rounds, medians): PyTorch eager of the unfolded
PI-H2T model, of the folded model and of a vanilla torchvision/CIFAR model; onnxruntime fp32; onnxruntime INT8
(calibrated on 64 random inputs: this measures speed only); and the torch.export program (model.pt2).
Latency at batch 1 and throughput at batch 32, as ratios to PyTorch eager of the unfolded model.

    python benchmarks/export.py [--threads 2] [--output runs/bench-export]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pih2t_deploy.export.onnx_export import export_onnx
from pih2t_deploy.export.quantize import quantize_int8
from pih2t_deploy.export.torch_program import export_program
from pih2t_deploy.fold import fold
from pih2t_deploy.models import NetworkConfig, PIH2TNet, create_arch
from pih2t_deploy.timing import time_interleaved


def calibrated(arch: str, size: int) -> PIH2TNet:
    torch.manual_seed(0)
    net = PIH2TNet(NetworkConfig(arch=arch, num_classes=100, method="pih2t", lws=True))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        net.train()(torch.randn(16, 3, size, size))
    return net.eval()


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_arch(arch: str, size: int, threads: int, work: Path) -> dict:
    net = calibrated(arch, size)
    folded, _ = fold(net, input_shape=(3, size, size))
    vanilla = create_arch(arch, 100).eval()
    example = torch.randn(2, 3, size, size)
    export_onnx(folded, work / f"{arch}.onnx", example)
    quantize_int8(
        work / f"{arch}.onnx",
        work / f"{arch}.int8.onnx",
        np.random.default_rng(0).standard_normal((64, 3, size, size)).astype(np.float32),
    )
    export_program(folded, example, work / f"{arch}.pt2", None)
    program = torch.export.load(str(work / f"{arch}.pt2")).module()
    fp32, int8 = session(work / f"{arch}.onnx", threads), session(work / f"{arch}.int8.onnx", threads)
    results = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size)
        xn = x.numpy()
        started = time.perf_counter()
        with torch.inference_mode():
            net(x)
        repeats = max(2, min(50, int(0.5 / (time.perf_counter() - started))))
        rounds = 7 if repeats > 2 else 5

        def eager(module, data=x):
            with torch.inference_mode():
                return module(data)

        timings = time_interleaved(
            {
                "eager_pih2t": lambda: eager(net),
                "eager_folded": lambda: eager(folded),
                "eager_vanilla": lambda: eager(vanilla),
                "torch_export_pt2": lambda: eager(program),
                "onnxruntime_fp32": lambda data=xn: fp32.run(None, {"input": data}),
                "onnxruntime_int8": lambda data=xn: int8.run(None, {"input": data}),
            },
            rounds=rounds,
            repeats=repeats,
        )
        base = timings["eager_pih2t"].median
        results[f"batch{batch}"] = {
            name: {"ms": 1000 * t.median, "images_per_s": batch / t.median, "speedup_vs_eager_pih2t": base / t.median}
            for name, t in timings.items()
        }
        results[f"batch{batch}"]["folded_over_vanilla_latency"] = (
            timings["eager_folded"].median / timings["eager_vanilla"].median
        )
        results[f"batch{batch}"]["int8_over_fp32_speedup"] = (
            timings["onnxruntime_fp32"].median / timings["onnxruntime_int8"].median
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archs", default="resnet32:32,resnet50:224")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-export"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for item in args.archs.split(","):
            arch, size = item.split(":")
            report["results"][arch] = bench_arch(arch, int(size), args.threads, Path(work))
            print(f"\n{arch} ({size}x{size}), {args.threads} threads")
            print("| model | batch 1 ms | x eager | batch 32 img/s | x eager |\n|---|---|---|---|---|")
            one, many = report["results"][arch]["batch1"], report["results"][arch]["batch32"]
            for name in (
                "eager_pih2t",
                "eager_folded",
                "eager_vanilla",
                "torch_export_pt2",
                "onnxruntime_fp32",
                "onnxruntime_int8",
            ):
                print(
                    f"| {name} | {one[name]['ms']:.2f} | {one[name]['speedup_vs_eager_pih2t']:.2f} | "
                    f"{many[name]['images_per_s']:.1f} | {many[name]['speedup_vs_eager_pih2t']:.2f} |"
                )
            print(
                f"folded/vanilla latency: {one['folded_over_vanilla_latency']:.3f} (batch 1), "
                f"{many['folded_over_vanilla_latency']:.3f} (batch 32); INT8/fp32 speed-up: "
                f"{one['int8_over_fp32_speedup']:.2f} (batch 1), {many['int8_over_fp32_speedup']:.2f} (batch 32)",
                flush=True,
            )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "export.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
