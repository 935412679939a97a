"""Export a checkpoint to every requested format, verify each, time each side by side, measure accuracy.

PyTorch eager on the unfolded PI-H2T model is the baseline of every ratio. A format that cannot run here
(TensorRT without a GPU, INT8 without calibration images, a CUDA provider that is missing) is reported as
skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pih2t_deploy.bench.machine import cpu_info
from pih2t_deploy.bench.peak import cpu_peaks, model_ops_per_image
from pih2t_deploy.checkpoint import Checkpoint, load_checkpoint, versions
from pih2t_deploy.data.longtail import GroupThresholds
from pih2t_deploy.errors import ConfigError, UserError, VerificationError
from pih2t_deploy.evaluation import summarize
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.export.real_images import load_images
from pih2t_deploy.export.runners import Runner, run_chunked, torch_runner
from pih2t_deploy.formats import bench_entries
from pih2t_deploy.runtime import load_classifier
from pih2t_deploy.timing import Timing, time_interleaved

logger = logging.getLogger(__name__)

BASELINE = "torch"


def installed_formats() -> list[str]:
    """The default ``--formats``: the baseline and every bench name whose runtime is installed here."""
    return [BASELINE, *(name for name, (spec, _) in bench_entries().items() if spec.runtime_installed())]


@dataclass
class BenchOptions:
    """What to benchmark and how."""

    ckpt: Path
    output: Path
    formats: list[str] = field(default_factory=installed_formats)
    max_group_drop: float = 2.0
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    eval_data: str | None = None
    calib_data: str | None = None
    device: str = "cpu"
    threads: int | None = None
    rounds: int = 5
    min_seconds: float = 0.2

    def validate(self) -> None:
        """ConfigError for unknown formats, bad batch sizes or devices."""
        known = [BASELINE, *bench_entries()]
        unknown = [f for f in self.formats if f not in known]
        if unknown:
            raise ConfigError(f"unknown format {unknown[0]!r}; choose from: {', '.join(known)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError("--batch takes positive batch sizes, e.g. 1,8,32")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError("--device must be cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was requested but PyTorch sees no CUDA GPU; use --device cpu")
        if self.rounds < 1:
            raise ConfigError("--rounds must be at least 1")


def _prepare_format(
    name: str, options: BenchOptions, ckpt: Checkpoint, log: Callable[[str], None]
) -> tuple[Runner, dict]:
    spec, extra = bench_entries()[name]
    calib = options.calib_data or ("recipe" if "data" in ckpt.meta else None)
    if spec.needs_calibration and calib is None:
        raise UserError("INT8 needs calibration images: pass --calib-data FOLDER")
    if extra.get("bf16") and options.eval_data is None:
        raise UserError("bf16 is judged on labelled images: pass --eval-data")
    settings: dict[str, Any] = {
        "output": options.output / "artifacts" / name,
        "format": spec.name,
        "force": True,
        "max_batch": max(options.batches),
        "calib_data": calib if spec.needs_calibration else None,
        "eval_data": options.eval_data if extra.get("bf16") else None,
        **extra,
    }
    if "max_group_drop" in spec.options:
        settings["max_group_drop"] = options.max_group_drop
    export_options = ExportOptions(**settings)
    log(f"exporting {name}")
    manifest = export_checkpoint(options.ckpt, export_options).manifest
    classifier = load_classifier(
        options.output / "artifacts" / name, spec.backend, device=options.device, threads=options.threads
    )
    return classifier.predict, {
        "verification": manifest.verification,
        "graph_identical": (manifest.graph or {}).get("identical"),
    }


def _repeats(runner: Runner, x: np.ndarray, min_seconds: float) -> int:
    started = time.perf_counter()
    runner(x)
    once = max(time.perf_counter() - started, 1e-6)
    return max(2, min(50, int(min_seconds / once)))


def timing_row(timing: Timing, batch: int, baseline: Timing) -> dict[str, float]:
    """One format's figures at one batch size: median, 90th and 99th percentile latency in ms, images per
    second at the median, and the speed-up over the baseline's median."""
    return {
        "p50_ms": 1000 * timing.median,
        "p90_ms": 1000 * timing.p90,
        "p99_ms": 1000 * timing.p99,
        "images_per_s": batch / timing.median,
        "speedup_vs_torch": baseline.median / timing.median,
    }


def format_precision(name: str) -> str:
    """What ``name`` (a --formats name) computes in on the CPU: fp32, bf16 or int8."""
    if name == BASELINE:
        return "fp32"
    spec, extra = bench_entries()[name]
    return "bf16" if extra.get("bf16") else spec.precision


def add_ops_and_peak(timings: dict[str, Any], ops_per_image: float, cores: int) -> dict[str, Any]:
    """Adds to every timing row the operations per second it achieved (``gops_per_s``) and that as a fraction
    of the CPU's peak for the format's precision on ``cores`` cores (``of_peak``, None where the CPU has no
    peak for it); returns the peaks used."""
    peaks = cpu_peaks(cores)
    for name, per_batch in timings.items():
        peak = peaks.get(format_precision(name))
        for row in per_batch.values():
            achieved = ops_per_image * row["images_per_s"]
            row["gops_per_s"] = achieved / 1e9
            row["of_peak"] = achieved / peak.ops_per_s if peak else None
    return {p.precision: {"gops_per_s": p.ops_per_s / 1e9, "instruction": p.instruction} for p in peaks.values()}


def passes_accuracy_gate(accuracy: dict[str, Any], name: str, max_group_drop: float) -> bool:
    """``name`` loses at most ``max_group_drop`` points against the PyTorch baseline on top-1 and on every
    Many/Medium/Few group that has test images."""
    base, own = accuracy[BASELINE], accuracy[name]
    groups = [k for k in ("top1", "many", "medium", "few") if base.get(k) is not None]
    return all(100 * (base[k] - own[k]) <= max_group_drop for k in groups)


def recommend(
    timings: dict[str, Any], accuracy: dict[str, Any], batches: list[int], max_group_drop: float
) -> dict[str, Any]:
    """Per batch size, the fastest measured format that passes the accuracy gate (without accuracy numbers,
    none is recommended: speed alone never decides)."""
    if not accuracy:
        return {"reason": "no --eval-data: accuracy was not measured, so nothing is recommended"}
    eligible = [n for n in timings if n in accuracy and passes_accuracy_gate(accuracy, n, max_group_drop)]
    chosen = {}
    for batch in batches:
        best = max(eligible, key=lambda n: timings[n][str(batch)]["images_per_s"])
        chosen[str(batch)] = {"format": best, "speedup_vs_torch": timings[best][str(batch)]["speedup_vs_torch"]}
    rejected = sorted(n for n in timings if n in accuracy and n not in eligible)
    return {"by_batch": chosen, "max_group_drop": max_group_drop, "failed_accuracy_gate": rejected}


def run_bench(options: BenchOptions, log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Export, verify, time and (with --eval-data) score every format; returns the report dict."""
    options.validate()
    if options.threads:
        torch.set_num_threads(options.threads)
    ckpt = load_checkpoint(options.ckpt)
    options.output.mkdir(parents=True, exist_ok=True)
    runners: dict[str, Runner] = {}
    formats: dict[str, dict[str, Any]] = {}
    for name in options.formats:
        if name == BASELINE:
            runners[name] = torch_runner(ckpt.net, options.device)
            formats[name] = {"status": "ok", "note": "PyTorch eager, unfolded PI-H2T model (baseline)"}
            continue
        try:
            runners[name], details = _prepare_format(name, options, ckpt, log)
            formats[name] = {"status": "ok", **details}
        except (UserError, VerificationError) as exc:
            formats[name] = {"status": "skipped", "reason": str(exc)}
            log(f"skipped {name}: {exc}")
    if BASELINE not in runners:
        runners = {BASELINE: torch_runner(ckpt.net, options.device), **runners}
        formats = {BASELINE: {"status": "ok", "note": "baseline"}, **formats}
    shape = ckpt.preprocessing.input_shape
    timings: dict[str, dict[str, Any]] = {name: {} for name in runners}
    for batch in options.batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        repeats = _repeats(runners[BASELINE], x, options.min_seconds)
        log(f"timing batch {batch} ({options.rounds} rounds x {repeats} calls per format)")
        measured = time_interleaved(
            {n: functools.partial(r, x) for n, r in runners.items()}, rounds=options.rounds, repeats=repeats
        )
        for name, timing in measured.items():
            timings[name][str(batch)] = timing_row(timing, batch, measured[BASELINE])
    ops_per_image = model_ops_per_image(ckpt.net, tuple(shape))
    cores = min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    peaks = add_ops_and_peak(timings, ops_per_image, cores) if options.device == "cpu" else {}
    accuracy: dict[str, Any] = {}
    if options.eval_data:
        found = load_images(options.eval_data, ckpt, split="test")
        if found.labels is None:
            raise UserError(f"--eval-data {options.eval_data} has no class sub-folders, so accuracy cannot be measured")
        inputs = ckpt.preprocessing.to_numpy(found.images)
        thresholds = GroupThresholds.from_meta(ckpt.meta)
        counts = ckpt.class_counts or [1] * ckpt.meta["num_classes"]
        for name, runner in runners.items():
            summary = summarize(run_chunked(runner, inputs, max(options.batches)), found.labels, counts, thresholds)
            accuracy[name] = {k: summary[k] for k in ("top1", "top5", "many", "medium", "few")}
    return {
        "checkpoint": str(options.ckpt),
        "arch": ckpt.meta["arch"],
        "method": ckpt.meta["method"],
        "input_shape": list(shape),
        "device": options.device if options.device == "cpu" else torch.cuda.get_device_name(0),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_info(),
        "ops_per_image": ops_per_image,
        "peaks": peaks,
        "recommended": recommend(timings, accuracy, options.batches, options.max_group_drop),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "batches": options.batches,
        "formats": formats,
        "timings": timings,
        "accuracy": accuracy,
        "versions": versions(),
    }
