"""CPU runtimes side by side on the same folded ResNet-50 (224, 100 classes): onnxruntime fp32 and INT8,
OpenVINO fp32, bf16 and INT8, each written by pih2t-export, timed interleaved in one run with the same threads.

    python benchmarks/openvino_cpu.py [--threads 2] [--rounds 5] [--output runs/bench-openvino]

Weights are random (no ImageNet-LT weights can be downloaded here), so this measures speed only; accuracy of
the reduced-precision formats is measured on trained models by ``pih2t-bench --eval-data`` (docs). bf16 runs
only where OpenVINO reports BF16 among the CPU's capabilities. Prints a markdown table with ratios to
onnxruntime fp32 and the CPU's model and flags.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from bench_common import jpeg_bytes

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.checkpoint import build_meta, save_checkpoint
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.models import NetworkConfig, PIH2TNet
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.runtime.openvino_backend import cpu_description, ir_runner
from pih2t_deploy.timing import time_interleaved

BATCHES = (1, 32)


def _calibration_folder(folder: Path, count: int = 48) -> Path:
    """``count`` JPEGs: 32 to calibrate on and 16 held out (INT8 is judged on images it was not calibrated on)."""
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"{index}.jpg").write_bytes(jpeg_bytes(256 + index))
    return folder


def build_artifacts(
    work: Path, only: tuple[str, ...] = ("onnx", "onnx-int8", "openvino", "openvino-int8")
) -> dict[str, Path]:
    """ResNet-50 PI-H2T checkpoint (random weights) exported in the formats ``only`` names."""
    net = PIH2TNet(NetworkConfig(arch="resnet50", num_classes=100, method="pih2t")).eval()
    ckpt = save_checkpoint(work / "model.pt", net, build_meta(net.config, class_counts=list(range(200, 100, -1))))
    calib = str(_calibration_folder(work / "calib"))
    formats = {
        "onnx": {},
        "onnx-int8": {"calib_data": calib, "calib_count": 32, "max_group_drop": 100.0},
        "openvino": {},
        "openvino-int8": {"calib_data": calib, "calib_count": 32, "max_group_drop": 100.0},
    }
    for name in only:
        export_checkpoint(ckpt, ExportOptions(output=work / name, format=name, max_batch=max(BATCHES), **formats[name]))
    return {name: work / name for name in only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-openvino"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pih2t-openvino-bench-") as scratch:
        folders = build_artifacts(Path(scratch))
        runners = {
            "onnxruntime fp32 (model.onnx)": load_classifier(folders["onnx"], threads=args.threads).predict,
            "onnxruntime INT8 (model.int8.onnx)": load_classifier(folders["onnx-int8"], threads=args.threads).predict,
            "OpenVINO fp32 (model.xml)": ir_runner(folders["openvino"] / "model.xml", "f32", args.threads),
            "OpenVINO INT8 (INT8 model.xml)": ir_runner(folders["openvino-int8"] / "model.xml", "f32", args.threads),
        }
        if "BF16" in cpu_description()["capabilities"]:
            runners["OpenVINO bf16 (model.xml, bf16 hint)"] = ir_runner(
                folders["openvino"] / "model.xml", "bf16", args.threads
            )
        results: dict[str, dict[int, float]] = {name: {} for name in runners}
        for batch in BATCHES:
            x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            calls = {n: (lambda r=r, x=x: r(x)) for n, r in runners.items()}
            measured = time_interleaved(calls, rounds=args.rounds, repeats=3)
            for name, timing in measured.items():
                results[name][batch] = timing.median
    base = next(iter(results.values()))
    cpu = cpu_info()
    lines = [
        f"CPU: {cpu['model']}; flags: {', '.join(cpu['flags'])}; OpenVINO {cpu_description()['openvino']}; "
        f"{args.threads} threads",
        "",
        "| runtime (same folded ResNet-50) | batch 1 ms | x ORT fp32 | batch 32 images/s | x ORT fp32 |",
        "|---|---|---|---|---|",
    ]
    for name, times in results.items():
        lines.append(
            f"| {name} | {1000 * times[1]:.1f} | {base[1] / times[1]:.2f} | {32 / times[32]:.1f} | "
            f"{base[32] / times[32]:.2f} |"
        )
    print("\n".join(lines))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "openvino_cpu.json").write_text(json.dumps({"cpu": cpu, "seconds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
