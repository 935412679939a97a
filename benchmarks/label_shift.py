"""Label shift on Digits-LT: how well the server's estimate finds a deployment prior it was not told, what
correcting for it does to accuracy, and what the watch costs.

Trains the digits-lt recipe (PI-H2T, about 20 s) unless --ckpt is given. The Digits-LT test split (500
images, 50 per class) is cut in two halves per class: half A is the labelled --eval-data of an export that
*measures* its reference prior; an export without --eval-data takes the reference from the training rule.
From half B (never seen by either export) it draws 10,000 images (with replacement, seed 0) under each of three
known priors: the training prior itself (no shift), the long tail reversed (the rarest training class the most
common), and uniform. For each, and for both references, it reports:

- the total-variation distance between the EM estimate and the true prior after 500, 2,000 and 10,000
  images (the estimate pih2t-serve's /v1/label-shift gives, same code), beside the distance of the training
  prior and of the reference (what you would get without estimating);
- top-1 and Many/Medium/Few accuracy of the 10,000 answers as served, with --adapt-prior's correction for the
  estimate (smoothed, bounded, as served), and with the correction for the true prior (the best it could do);
- the serving cost of the watch: requests per second of pih2t-serve with --watch and with --no-watch, driven
  by the same client at concurrency 8, alternated three times in one run.

    python benchmarks/label_shift.py [--ckpt runs/digits/model.pt] [--seconds 8] [--output runs/bench-shift]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pih2t_deploy.bench.load import run_load
from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.data.label_shift import PriorWatch, total_variation
from pih2t_deploy.data.longtail import GroupThresholds, softmax
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.evaluation import summarize
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.serving.process import free_port, start_rest_server

SAMPLE = 10_000
CHECKPOINTS = (500, 2000, 10_000)


def train(folder: Path) -> Path:
    from pih2t_deploy.training.engine import Trainer
    from pih2t_deploy.training.recipe import load_recipe

    recipe = load_recipe("digits-lt", ["runtime.progress=false"])
    return Trainer(recipe, folder / "run", log=lambda _m: None).run().model_path


def groups_accuracy(logits: np.ndarray, labels: np.ndarray, counts: list[int], thresholds: GroupThresholds) -> dict:
    summary = summarize(logits, labels, counts, thresholds)
    groups = ("top1", "many", "medium", "few")
    return {k: round(100 * summary[k], 2) if summary[k] is not None else None for k in groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per load run for the watch's cost")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-shift"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pih2t-shift-"))
    ckpt = args.ckpt or train(work)
    data = build_data(DataConfig(source="digits-lt"))
    labels_all = np.asarray(data.test.targets)
    rng = np.random.default_rng(0)
    half_a = np.zeros(len(labels_all), dtype=bool)
    for label in np.unique(labels_all):
        members = rng.permutation(np.flatnonzero(labels_all == label))
        half_a[members[: len(members) // 2]] = True
    for index in np.flatnonzero(half_a):
        folder = work / "half-a" / data.train.class_names[labels_all[index]]
        folder.mkdir(parents=True, exist_ok=True)
        data.test.image(index).save(folder / f"{index:04d}.png")
    export_checkpoint(ckpt, ExportOptions(output=work / "rule"))
    export_checkpoint(ckpt, ExportOptions(output=work / "measured", eval_data=str(work / "half-a")))
    half_b = np.flatnonzero(~half_a)
    report: dict = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "cpu": cpu_info(),
        "checkpoint": str(ckpt), "reference_images": int(half_a.sum()), "deployment_pool": len(half_b), "shifts": {},
    }  # fmt: skip
    for reference_kind in ("rule", "measured"):
        classifier = load_classifier(work / reference_kind)
        model = classifier.info.prior_model
        assert model is not None
        logits_b = classifier.predict(classifier.prepare([data.test.image(i) for i in half_b]))
        counts = list(classifier.info.class_counts or [])
        thresholds = GroupThresholds.from_meta(classifier.info.meta)
        train_prior, reference = model.train_prior, np.exp(model.log_reference_prior)
        priors = {"training prior (no shift)": train_prior, "long tail reversed": train_prior[::-1].copy(),
                  "uniform": np.full(len(counts), 1 / len(counts))}  # fmt: skip
        draw = np.random.default_rng(0)
        by_class = [np.flatnonzero(labels_all[half_b] == c) for c in range(len(counts))]
        for name, prior in priors.items():
            classes = draw.choice(len(counts), size=SAMPLE, p=prior)
            picks = np.array([draw.choice(by_class[c]) for c in classes])
            logits, labels = logits_b[picks], labels_all[half_b][picks]
            watch = PriorWatch(model, window=SAMPLE, refresh=1, min_samples=1)
            distances = {}
            for end, start in zip(CHECKPOINTS, (0, *CHECKPOINTS[:-1]), strict=True):
                watch.add(softmax(logits[start:end]))
                distances[str(end)] = round(total_variation(watch.estimate(), prior), 4)
            adapted = watch.adapted()
            oracle = np.clip(np.log((0.9 * prior + 0.1 * reference) / reference), -np.log(10), np.log(10))
            row = {
                "reference": model.reference_basis,
                "true_prior": prior.round(4).tolist(),
                "tv_estimate_after": distances,
                "tv_training_prior": round(total_variation(train_prior, prior), 4),
                "tv_reference_prior": round(total_variation(reference, prior), 4),
                "accuracy_as_served": groups_accuracy(logits, labels, counts, thresholds),
                "accuracy_adapted": groups_accuracy(logits + adapted, labels, counts, thresholds),
                "accuracy_true_prior_correction": groups_accuracy(logits + oracle, labels, counts, thresholds),
            }
            report["shifts"][f"{name}, {reference_kind} reference"] = row
            print(name, reference_kind, json.dumps(row), flush=True)
    report["watch_cost"] = watch_cost(work / "measured", data.test.image(0), args.seconds)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "label_shift.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["watch_cost"]))


def watch_cost(artifact: Path, image: Image.Image, seconds: float) -> dict:
    """Requests per second of the same server with the watch on and off, alternated three times."""
    path = artifact.parent / "sample.png"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    runs: dict[str, list[float]] = {"watch": [], "no-watch": []}
    for _ in range(3):
        for label in runs:
            port = free_port()
            server = start_rest_server(artifact, port, f"--{label}", "--max-batch", "8")
            try:
                result = run_load(f"http://127.0.0.1:{port}", 8, seconds, path, model="digits-lt")
            finally:
                server.terminate()
                server.wait(timeout=30)
            runs[label].append(result["throughput"])
    medians = {label: float(np.median(values)) for label, values in runs.items()}
    return {"requests_per_s": runs, "median": medians, "watch_over_no_watch": medians["watch"] / medians["no-watch"]}


if __name__ == "__main__":
    main()
