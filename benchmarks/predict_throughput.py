"""Is decoding the bottleneck of pih2t-predict? Images/s of the whole pipeline (read, decode, preprocess in the
decoding threads, model, top-k) against the raw backend on the same images already decoded, same batch size,
timed interleaved in one run. Two artifacts with random weights (speed only): Digits-LT's digits_net on 8x8
grayscale PNGs, and a ResNet-50 at 224 on 256x256 JPEGs (resized to 256, centre-cropped to 224).

    python benchmarks/predict_throughput.py [--threads 2] [--batch 32] [--rounds 3] [--ray]

Prints a markdown table with the ratio (target >= 0.9) and the CPU's model and flags. With ``--ray`` it also
times the same jobs end to end (pih2t-predict's local engine into JSONL against ``--engine ray`` with two
1-thread actors on a local Ray instance, started once before timing) and prints Ray's overhead.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import resnet50_artifact
from PIL import Image

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.checkpoint import build_meta, save_checkpoint
from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.models import NetworkConfig, PIH2TNet
from pih2t_deploy.predict.inputs import InputItem
from pih2t_deploy.predict.local import stream_rows
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.timing import time_interleaved


def digits_artifact(folder: Path) -> Path:
    """digits_net (random weights) for 8x8 grayscale images, exported to ONNX."""
    net = PIH2TNet(NetworkConfig(arch="digits_net", num_classes=10, in_channels=1, method="pih2t")).eval()
    prep = Preprocessing(8, 8, "L", (0.5,), (0.5,))
    meta = build_meta(net.config, class_counts=[120, 90, 60, 40, 25, 15, 9, 5, 3, 2], preprocessing=prep)
    export_checkpoint(save_checkpoint(folder / "digits.pt", net, meta), ExportOptions(output=folder / "digits"))
    return folder / "digits"


def write_images(folder: Path, count: int, size: int, mode: str, suffix: str) -> list[InputItem]:
    """``count`` distinct random images on disk."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for index in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
            buffer, format="JPEG" if suffix == ".jpg" else "PNG", quality=90
        )
        path = folder / f"{index:05d}{suffix}"
        path.write_bytes(buffer.getvalue())
        items.append(InputItem(str(path)))
    return items


def measure(artifact: Path, items: list[InputItem], batch: int, threads: int, rounds: int) -> dict[str, float]:
    """Seconds per pass over ``items``: the whole pipeline and the raw backend on pre-decoded batches."""
    classifier = load_classifier(artifact, threads=threads)
    decoded = classifier.prepare([Image.open(item.path) for item in items])
    batches = [decoded[i : i + batch] for i in range(0, len(decoded), batch)]

    def raw() -> None:
        for chunk in batches:
            classifier.probabilities(classifier.predict(chunk))

    def pipeline() -> None:
        for _ in stream_rows(classifier, items, top_k=5, batch_size=batch):
            pass

    timing = time_interleaved({"raw": raw, "pipeline": pipeline}, rounds=rounds, repeats=1, warmup=1)
    return {name: t.median for name, t in timing.items()}


def ray_overhead(artifact: Path, folder: Path, work: Path, batch: int) -> dict[str, float]:
    """Seconds of one whole job on each engine (the second Ray run: the first starts Ray and its actors)."""
    from pih2t_deploy.predict.job import run_local
    from pih2t_deploy.predict.ray_engine import run_on_ray

    started = time.perf_counter()
    run_local(artifact, str(folder), work / "local.jsonl", batch_size=batch, threads=2, progress=False)
    local = time.perf_counter() - started
    run_on_ray(artifact, str(folder), work / "ray-warm", batch_size=batch, threads=1, num_workers=2, progress=False)
    started = time.perf_counter()
    run_on_ray(artifact, str(folder), work / "ray", batch_size=batch, threads=1, num_workers=2, progress=False)
    return {"local": local, "ray": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also time the job on a local Ray instance")
    args = parser.parse_args()
    rows, ray_rows = [], []
    with tempfile.TemporaryDirectory(prefix="pih2t-predict-bench-") as scratch:
        work = Path(scratch)
        digits = digits_artifact(work), write_images(work / "png", 4000, 8, "L", ".png")
        resnet = resnet50_artifact(work / "r50"), write_images(work / "jpg", 128, 256, "RGB", ".jpg")
        cases = [("Digits-LT digits_net, 8x8 PNG", *digits), ("ResNet-50, 256x256 JPEG -> 224", *resnet)]
        for name, artifact, items in cases:
            seconds = measure(artifact, items, args.batch, args.threads, args.rounds)
            raw, full = len(items) / seconds["raw"], len(items) / seconds["pipeline"]
            rows.append(f"| {name} | {len(items)} | {raw:.0f} | {full:.0f} | {full / raw:.2f} |")
            if args.ray:
                jobs = ray_overhead(artifact, Path(items[0].path).parent, work / name.split()[0], args.batch)
                ray_rows.append(f"| {name} | {len(items)} | {jobs['local']:.2f} | {jobs['ray']:.2f} | "
                                f"{jobs['ray'] / jobs['local']:.2f} |")  # fmt: skip
    cpu = cpu_info()
    print(
        f"CPU: {cpu['model']}; flags: {', '.join(cpu['flags'])}; {args.threads} inference threads, batch {args.batch}"
    )
    print("\n| model, images | images | raw backend images/s | pih2t-predict images/s | ratio |\n|---|---|---|---|---|")
    print("\n".join(rows))
    if ray_rows:
        print("\n| model, images | images | local engine s | Ray engine s (2 actors) | Ray / local |")
        print("|---|---|---|---|---|")
        print("\n".join(ray_rows))


if __name__ == "__main__":
    main()
