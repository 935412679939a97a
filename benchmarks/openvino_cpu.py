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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_common import jpeg_bytes

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.bench.peak import cpu_peaks, model_ops_per_image
from pih2t_deploy.checkpoint import build_meta, save_checkpoint
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.models import NetworkConfig, PIH2TNet
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.runtime.openvino_backend import IRRunner, compile_ir, cpu_description
from pih2t_deploy.timing import time_interleaved

BATCHES = (1, 32)


def _calibration_folder(folder: Path, count: int = 48) -> Path:
    """``count`` JPEGs: 32 to calibrate on and 16 held out (INT8 is judged on images it was not calibrated on)."""
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"{index}.jpg").write_bytes(jpeg_bytes(256 + index))
    return folder


def resnet50() -> PIH2TNet:
    """The benchmark's ResNet-50 PI-H2T network (random weights, 100 classes)."""
    return PIH2TNet(NetworkConfig(arch="resnet50", num_classes=100, method="pih2t")).eval()


def build_artifacts(
    work: Path, only: tuple[str, ...] = ("onnx", "onnx-int8", "openvino", "openvino-int8")
) -> dict[str, Path]:
    """ResNet-50 PI-H2T checkpoint (random weights) exported in the formats ``only`` names."""
    net = resnet50()
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


def throughput_runner(xml: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO's THROUGHPUT hint: several streams, the batch split over as many asynchronous requests."""
    import openvino as ov

    compiled = compile_ir(xml, "f32", threads, "throughput")
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    outputs: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, index: outputs.__setitem__(index, request.get_output_tensor(0).data.copy()))

    def run(batch: np.ndarray) -> np.ndarray:
        outputs.clear()
        for index, part in enumerate(np.array_split(batch, min(len(batch), len(queue)))):
            queue.start_async({0: np.ascontiguousarray(part)}, index)
        queue.wait_all()
        return np.concatenate([outputs[i] for i in sorted(outputs)])

    return run


def static_runner(xml: Path, threads: int, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """The IR reshaped to a static batch of ``batch`` before compiling (the default LATENCY hint)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({model.input(0): [batch, 3, 224, 224]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    return lambda x: np.asarray(compiled({0: x})[compiled.output(0)])


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
            "OpenVINO fp32 (model.xml)": IRRunner(folders["openvino"] / "model.xml", "f32", args.threads),
            "OpenVINO INT8 (INT8 model.xml)": IRRunner(folders["openvino-int8"] / "model.xml", "f32", args.threads),
        }
        if "BF16" in cpu_description()["capabilities"]:
            runners["OpenVINO bf16 (model.xml, bf16 hint)"] = IRRunner(
                folders["openvino"] / "model.xml", "bf16", args.threads
            )
        int8_xml = folders["openvino-int8"] / "model.xml"
        batch32_only = {  # settings tried on the fastest artifact at batch 32 only
            "OpenVINO INT8, THROUGHPUT hint, batch split over its streams": throughput_runner(int8_xml, args.threads),
            "OpenVINO INT8, static batch 32": static_runner(int8_xml, args.threads, 32),
        }
        results: dict[str, dict[int, float]] = {name: {} for name in [*runners, *batch32_only]}
        for batch in BATCHES:
            x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            timed = {**runners, **(batch32_only if batch == 32 else {})}
            calls = {n: (lambda r=r, x=x: r(x)) for n, r in timed.items()}
            measured = time_interleaved(calls, rounds=args.rounds, repeats=3)
            for name, timing in measured.items():
                results[name][batch] = timing.median
    base = next(iter(results.values()))
    cpu = cpu_info()
    ops = model_ops_per_image(resnet50(), (3, 224, 224))
    peaks = cpu_peaks(args.threads)
    lines = [
        f"CPU: {cpu['model']}; flags: {', '.join(cpu['flags'])}; OpenVINO {cpu_description()['openvino']}; "
        f"{args.threads} threads; {ops / 1e9:.2f} G operations per image; peak "
        + "; ".join(f"{p.precision} {p.ops_per_s / 1e9:.0f} G ops/s ({p.instruction})" for p in peaks.values()),
        "",
        "| runtime (same folded ResNet-50) | batch 1 ms | x ORT fp32 | batch 32 images/s | x ORT fp32 "
        "| batch 32 G ops/s | % of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, times in results.items():
        precision = "int8" if "INT8" in name else "bf16" if "bf16" in name else "fp32"
        achieved = ops * 32 / times[32]
        of_peak = f"{100 * achieved / peaks[precision].ops_per_s:.1f}" if precision in peaks else "-"
        first = f"{1000 * times[1]:.1f} | {base[1] / times[1]:.2f}" if 1 in times else "- | -"
        lines.append(
            f"| {name} | {first} | {32 / times[32]:.1f} | {base[32] / times[32]:.2f} | {achieved / 1e9:.0f} "
            f"| {of_peak} |"
        )
    print("\n".join(lines))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "openvino_cpu.json").write_text(json.dumps({"cpu": cpu, "seconds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
