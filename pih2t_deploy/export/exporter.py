"""``pih2t-export``: checkpoint -> fold -> export -> verify -> artifact folder, all or nothing.

Options are validated first (and TensorRT's presence, for ``trt``), then the model is folded (checked in
float64), exported by the format's builder into a temporary folder, verified through its runner against the
unfolded PyTorch model (random inputs at batch 1, 2 and --max-batch; real images with --eval-data), and only
then renamed into place with ``labels.txt`` and ``model.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from pih2t_deploy.artifact import (
    ARTIFACT_FORMAT,
    MANIFEST_FILE,
    ArtifactError,
    Manifest,
    TensorSpec,
    read_manifest,
    write_labels,
    write_manifest,
)
from pih2t_deploy.atomic import atomic_dir, require_writable_folder
from pih2t_deploy.checkpoint import Checkpoint, load_checkpoint, versions
from pih2t_deploy.data.label_shift import fit_reference_prior, posteriors
from pih2t_deploy.data.longtail import GroupThresholds
from pih2t_deploy.errors import DataError, UserError
from pih2t_deploy.evaluation import summarize
from pih2t_deploy.export.builders import BuildInputs, BuildResult
from pih2t_deploy.export.gates import AccuracyGate, ParityGate
from pih2t_deploy.export.model_card import write_card
from pih2t_deploy.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.export.real_images import ImageSet, load_images
from pih2t_deploy.export.runners import Runner, run_chunked, torch_runner
from pih2t_deploy.export.verify import VerificationReport, compare, verify
from pih2t_deploy.export.wrappers import ExportModule
from pih2t_deploy.fold import FoldReport, fold
from pih2t_deploy.models import create_arch
from pih2t_deploy.provenance import SIGNATURE_FILE, sign_folder

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """Where the artifact is and what its manifest says."""

    folder: Path
    manifest: Manifest


class Adjusted(nn.Module):
    """The unfolded network minus the folded logit adjustment, divided by the folded temperature: the reference
    every export must match."""

    def __init__(self, net: nn.Module, adjustment: torch.Tensor, temperature: float = 1.0) -> None:
        super().__init__()
        self.net, self.temperature = net, temperature
        self.register_buffer("adjustment", adjustment.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) - self.adjustment) / self.temperature


def posthoc_choices(options: ExportOptions, meta: dict[str, Any]) -> tuple[float, float, str]:
    """(tau, temperature, where they come from): the options' values when given, else what training chose on
    validation (the checkpoint's ``posthoc``), else 0 and 1."""
    chosen = meta.get("posthoc") or {}
    tau = options.logit_adjust_tau if options.logit_adjust_tau is not None else float(chosen.get("tau", 0.0))
    temperature = options.temperature if options.temperature is not None else float(chosen.get("temperature", 1.0))
    given = options.logit_adjust_tau is not None and options.temperature is not None
    source = "as given" if given or not chosen else f"chosen on validation at training ({chosen.get('objective')})"
    return tau, temperature, source


def _check_output(output: Path, force: bool) -> None:
    """The output is new, empty, or (with --force) an artifact this package wrote and nothing else: a folder
    that merely contains a model.json, or an artifact beside files its manifest does not list, is refused,
    since replacing it would delete what the export did not write."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder path")
    if output.is_dir() and any(output.iterdir()):
        if not (output / MANIFEST_FILE).exists():
            raise UserError(f"--output {output} is a non-empty folder that is not an artifact; choose another path")
        if not force:
            raise UserError(f"--output {output} already holds an artifact; pass --force to replace it")
        try:
            listed = set(read_manifest(output).files) | {MANIFEST_FILE, SIGNATURE_FILE}
        except ArtifactError:
            raise UserError(
                f"--output {output} holds a model.json that is not a pih2t artifact's; --force replaces only "
                "artifacts: choose another --output"
            ) from None
        foreign = sorted(entry.name for entry in output.iterdir() if entry.name not in listed)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise UserError(
                f"--output {output} holds files the export did not write ({shown}); --force would delete them: "
                "move them away or choose another --output"
            )
    require_writable_folder(output.parent, f"--output {output}")


def _require_tensorrt() -> None:
    from pih2t_deploy.runtime.tensorrt_backend import MISSING, import_tensorrt

    import_tensorrt()
    if not torch.cuda.is_available():
        raise UserError(MISSING)


def _inputs(images: ImageSet, ckpt: Checkpoint, pixels: bool) -> np.ndarray:
    prep = ckpt.preprocessing
    return prep.to_pixels(images.images) if pixels else prep.to_numpy(images.images)


def _accuracy(outputs: np.ndarray, labels: np.ndarray, ckpt: Checkpoint) -> dict[str, Any]:
    counts = ckpt.class_counts or [1] * outputs.shape[1]
    summary = summarize(outputs, labels, counts, GroupThresholds.from_meta(ckpt.meta))
    return {k: summary[k] for k in ("top1", "top5", "many", "medium", "few")}


def _drops(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {k: 100 * (before[k] - after[k]) for k in ("top1", "many", "medium", "few") if before[k] is not None}


def export_checkpoint(
    ckpt_path: Path, options: ExportOptions, log: Callable[[str], None] = logger.info
) -> ExportResult:
    """Fold and export ``ckpt_path`` into ``options.output``; nothing is left there unless every check passes.

    Raises UserError for bad input (exit 2) and VerificationError when a check fails (exit 1).
    """
    options.validate()
    if options.format == "trt":
        _require_tensorrt()
    output = Path(options.output)
    _check_output(output, options.force)
    ckpt = load_checkpoint(ckpt_path, class_counts=options.class_counts, class_names=options.class_names, log=log)
    meta, prep = ckpt.meta, ckpt.preprocessing
    tau, temperature, chosen_by = posthoc_choices(options, meta)
    options = dataclasses.replace(options, logit_adjust_tau=tau, temperature=temperature)
    if tau and ckpt.class_counts is None:
        raise UserError(
            f"--logit-adjust needs the training images per class, which {ckpt_path} does not record; "
            "pass them with --class-counts N1,N2,... (one per class, in class order)"
        )
    log(f"loaded {ckpt_path}: {meta['arch']}, method {meta['method']}, {meta['num_classes']} classes")
    if tau or temperature != 1.0:
        log(f"folding logit-adjust tau {tau:g} and temperature {temperature:g}, {chosen_by}")
    eval_images = load_images(options.eval_data, ckpt, split="test") if options.eval_data else None
    folded, fold_report = fold(
        ckpt.net,
        input_shape=prep.input_shape,
        logit_adjust_tau=tau,
        class_counts=ckpt.class_counts,
        fuse_bn=options.fuse_bn,
        seed=options.seed,
        temperature=temperature,
    )
    log(
        f"folded: float64 max abs logit difference {fold_report.max_abs_diff:.2e}; PIF "
        + ("kept in the graph (it has an activation)" if fold_report.pif_kept_in_graph else "folded away")
    )
    wrap = dict(embed_preprocessing=options.embed_preprocessing, probs=options.probs)
    reference = torch_runner(ExportModule(Adjusted(ckpt.net, fold_report.adjustment, temperature), prep, **wrap))

    @functools.cache
    def calibration_and_holdout() -> tuple[ImageSet, ImageSet | None]:
        """The calibration images and, without --eval-data, images of the same source held out from them to
        judge the INT8 model on (never the images it was calibrated on)."""
        holdout = 0 if options.eval_data or not options.quantized else max(16, options.calib_count // 4)
        if options.calib_data is None:  # validate() refuses a format that calibrates without it
            raise UserError("calibration images are needed: pass --calib-data")
        found = load_images(
            options.calib_data,
            ckpt,
            split="train",
            limit=options.calib_count + holdout,
            minimum=32 if holdout else 16,
            seed=options.seed,
            why=" (16 to calibrate on, 16 held out to judge INT8 accuracy without --eval-data)" if holdout else "",
        )
        if not holdout:
            return found, None
        held_out = min(holdout, len(found.images) - 16)
        log(f"calibrating on {len(found.images) - held_out} images, judging INT8 on {held_out} others")
        return found.split(len(found.images) - held_out)

    def calibration() -> np.ndarray:
        return _inputs(calibration_and_holdout()[0], ckpt, options.embed_preprocessing)

    inputs = BuildInputs(
        folded=folded,
        vanilla=create_arch(meta["arch"], meta["num_classes"], meta["in_channels"]).eval(),
        num_classes=meta["num_classes"],
        prep=prep,
        options=options,
        metadata=_onnx_metadata(ckpt, options),
        calibration=calibration,
        log=log,
    )
    try:
        with atomic_dir(output) as tmp:
            built = options.spec.builder_function()(inputs, tmp)
            write_labels(tmp, ckpt.class_names)
            if eval_images is None and options.quantized:  # INT8 is judged on real images it was not calibrated on
                eval_images = calibration_and_holdout()[1]
            reports, accuracy = _verify(ckpt, options, reference, built, eval_images, log)
            described = _manifest(ckpt, options, fold_report, reports, accuracy, built.sections)
            write_card(tmp, described)  # README.md, listed and hashed in model.json with the other files
            manifest = write_manifest(tmp, described)
            if options.sign_key is not None:
                sign_folder(tmp, options.sign_key)
                log(f"signed with {options.sign_key} ({SIGNATURE_FILE})")
    except PermissionError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    return ExportResult(output, manifest)


def _verify(
    ckpt: Checkpoint,
    options: ExportOptions,
    reference: Runner,
    built: BuildResult,
    eval_images: ImageSet | None,
    log: Callable[[str], None],
) -> tuple[list[VerificationReport], dict[str, Any]]:
    """Parity on random batches and real images, accuracy per group on labelled ones; the gates decide."""
    parity = ParityGate.for_export(options)
    batches = parity.random_batches(ckpt.preprocessing, options.embed_preprocessing)
    reports = [verify(reference, built.runner, batches, parity.tolerance, "random")]
    log(f"{options.format} vs PyTorch on random inputs: max abs difference {reports[0].max_abs_diff:.2e}")
    accuracy: dict[str, Any] = {}
    if eval_images is not None:
        report, accuracy = _on_real_images(ckpt, options, reference, built, eval_images, parity.tolerance, log)
        reports.append(report)
    parity.enforce(reports)
    gate = AccuracyGate.for_export(options)
    if gate is not None:
        gate.enforce(reports[1:], accuracy)
    return reports, accuracy


def _on_real_images(
    ckpt: Checkpoint,
    options: ExportOptions,
    reference: Runner,
    built: BuildResult,
    eval_images: ImageSet,
    tolerance: float | None,
    log: Callable[[str], None],
) -> tuple[VerificationReport, dict[str, Any]]:
    """Parity on ``eval_images`` and, when they have labels, accuracy per group of the reference, the export
    and (INT8) the fp32 graph before quantization, with the points each group lost."""
    chunk = options.static_batch or options.max_batch
    inputs = _inputs(eval_images, ckpt, options.embed_preprocessing)
    if options.static_batch:
        inputs = inputs[: len(inputs) - len(inputs) % options.static_batch]
        if not len(inputs):
            raise DataError(f"--eval-data has fewer images than --static-batch {options.static_batch}")
    expected, actual = run_chunked(reference, inputs, chunk), run_chunked(built.runner, inputs, chunk)
    report = VerificationReport(f"real images ({eval_images.source})", tolerance, [compare(expected, actual)])
    if eval_images.labels is None:
        return report, {}
    labels = eval_images.labels[: len(inputs)]
    accuracy = {"pytorch": _accuracy(expected, labels, ckpt), "exported": _accuracy(actual, labels, ckpt)}
    if built.fp32_reference is not None:
        accuracy["onnx_fp32"] = _accuracy(run_chunked(built.fp32_reference, inputs, chunk), labels, ckpt)
    accuracy["drop_points"] = _drops(accuracy.get("onnx_fp32", accuracy["pytorch"]), accuracy["exported"])
    accuracy["label_shift"] = _reference_prior(actual, labels, options.probs, eval_images.source)
    log(
        "accuracy (top-1 / many / medium / few): "
        + ", ".join(
            f"{name} "
            + "/".join("-" if v[k] is None else f"{100 * v[k]:.1f}" for k in ("top1", "many", "medium", "few"))
            for name, v in accuracy.items()
            if name not in ("drop_points", "label_shift")
        )
    )
    return report, accuracy


def _reference_prior(outputs: np.ndarray, labels: np.ndarray, probabilities: bool, source: str) -> dict[str, Any]:
    """The prior the exported model's answers are calibrated to, measured on these labelled images
    (``data.label_shift.fit_reference_prior``; pih2t-serve's label-shift estimate uses it)."""
    reference = fit_reference_prior(posteriors(outputs, probabilities), labels)
    if reference is None:
        return {"reference_prior": None, "reason": f"some class has no image in {source}"}
    return {"reference_prior": [round(float(v), 8) for v in reference], "images": len(labels), "source": source}


def _onnx_metadata(ckpt: Checkpoint, options: ExportOptions) -> dict[str, Any]:
    return {
        "pih2t.format": ARTIFACT_FORMAT,
        "pih2t.class_names": ckpt.class_names,
        "pih2t.class_counts": ckpt.class_counts,
        "pih2t.preprocessing": ckpt.meta["preprocessing"],
        "pih2t.logit_adjust_tau": options.logit_adjust_tau,
        "pih2t.temperature": options.temperature,
        "pih2t.input": "uint8 NHWC pixels" if options.embed_preprocessing else "float32 NCHW normalised",
        "pih2t.output": "probabilities" if options.probs else "logits",
        "pih2t.meta": {k: v for k, v in ckpt.meta.items() if k not in ("class_names", "class_counts")},
    }


def _manifest(
    ckpt: Checkpoint,
    options: ExportOptions,
    fold_report: FoldReport,
    reports: list[VerificationReport],
    accuracy: dict[str, Any],
    sections: dict[str, Any],
) -> Manifest:
    c, h, w = ckpt.preprocessing.input_shape
    batch: int | str = options.static_batch or "batch"
    if options.embed_preprocessing:
        input_spec = TensorSpec(INPUT_NAME, [batch, h, w, c], "uint8", layout="NHWC")
    else:
        input_spec = TensorSpec(INPUT_NAME, [batch, c, h, w], "float32", layout="NCHW")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    kind = "probabilities" if options.probs else "logits"
    return Manifest(
        model_file=options.spec.model_file,
        model_format=options.format,
        input=input_spec,
        output=TensorSpec(OUTPUT_NAME, [batch, ckpt.meta["num_classes"]], "float32", kind=kind),
        meta=ckpt.meta,
        versions={**versions(), "onnx_runtime": ort.__version__},
        export=settings,
        fold=fold_report.to_dict(),
        verification=[r.to_dict() for r in reports],
        accuracy=accuracy,
        **sections,
    )
