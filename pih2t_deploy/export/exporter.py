"""``pih2t-export``: checkpoint -> fold -> export -> verify -> artifact folder, all or nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pih2t_deploy.atomic import atomic_dir
from pih2t_deploy.checkpoint import Checkpoint, load_checkpoint, versions
from pih2t_deploy.errors import ConfigError, UserError, VerificationError
from pih2t_deploy.export.artifact import MANIFEST, write_labels, write_manifest
from pih2t_deploy.export.onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from pih2t_deploy.export.verify import VerificationReport, verify_against
from pih2t_deploy.fold import FoldReport, fold, log_prior

ONNX_TOLERANCE = 1e-3


@dataclass
class ExportOptions:
    """Settings of one export; validated by ``validate`` before any work starts."""

    output: Path
    format: str = "onnx"
    opset: int = DEFAULT_OPSET
    static_batch: int | None = None
    max_batch: int = 8
    logit_adjust_tau: float = 0.0
    fuse_bn: bool = False
    tolerance: float = ONNX_TOLERANCE
    seed: int = 0
    class_counts: list[int] | None = field(default=None)
    class_names: list[str] | None = field(default=None)

    def validate(self) -> None:
        """Raise ConfigError for an unknown format or an option out of range."""
        if self.format != "onnx":
            raise ConfigError(f"unknown format {self.format!r}; choose one of: onnx")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset must be between 7 and 23, got {self.opset}")
        if self.static_batch is not None and self.static_batch < 1:
            raise ConfigError(f"--static-batch must be at least 1, got {self.static_batch}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.tolerance <= 0:
            raise ConfigError("--tolerance must be positive")


@dataclass
class ExportResult:
    """Where the artifact is and what its manifest says."""

    folder: Path
    manifest: dict[str, Any]


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder path")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST).exists():
        raise UserError(f"--output {output} is a non-empty folder that is not an artifact; choose another path")
    parent = output.parent if output.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise UserError(f"--output {output}: {probe} is not writable; choose a folder you can write to")


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the ONNX model at ``path`` on onnxruntime's CPU provider."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _batch_sizes(options: ExportOptions) -> list[int]:
    if options.static_batch:
        return [options.static_batch]
    return sorted({1, 2, options.max_batch})


def export_checkpoint(
    ckpt_path: Path, options: ExportOptions, log: Callable[[str], None] = lambda _msg: None
) -> ExportResult:
    """Fold and export ``ckpt_path`` into ``options.output``; nothing is left there unless every check passes.

    Raises UserError for bad input (exit 2) and VerificationError when a parity check fails (exit 1).
    """
    options.validate()
    output = Path(options.output)
    _check_output(output)
    ckpt = load_checkpoint(ckpt_path, class_counts=options.class_counts, class_names=options.class_names)
    log(f"loaded {ckpt_path}: {ckpt.meta['arch']}, method {ckpt.meta['method']}, {ckpt.meta['num_classes']} classes")
    prep = ckpt.preprocessing
    folded, fold_report = fold(
        ckpt.net,
        input_shape=prep.input_shape,
        logit_adjust_tau=options.logit_adjust_tau,
        class_counts=ckpt.class_counts,
        fuse_bn=options.fuse_bn,
        seed=options.seed,
    )
    log(f"folded: max abs logit difference {fold_report.max_abs_diff:.2e} (tolerance {fold_report.tolerance:.0e})")
    adjustment = (options.logit_adjust_tau * log_prior(ckpt.class_counts)).numpy() if options.logit_adjust_tau else None
    try:
        with atomic_dir(output) as tmp:
            model_path = tmp / "model.onnx"
            export_onnx(
                folded,
                model_path,
                prep.input_shape,
                opset=options.opset,
                static_batch=options.static_batch,
                metadata=_onnx_metadata(ckpt, options),
            )
            write_labels(tmp, ckpt.class_names)
            report = verify_against(
                ckpt.net,
                onnx_runner(model_path),
                prep.input_shape,
                batch_sizes=_batch_sizes(options),
                adjustment=adjustment,
                tolerance=options.tolerance,
                seed=options.seed,
            )
            log(f"onnxruntime vs PyTorch: max abs logit difference {report.max_abs_diff:.2e}")
            if not report.passed:
                raise VerificationError(
                    f"exported model differs from the PyTorch model by {report.max_abs_diff:.3g} "
                    f"(tolerance {options.tolerance:.3g}); no artifact was written"
                )
            manifest = write_manifest(tmp, _manifest(ckpt, options, fold_report, report))
    except PermissionError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    return ExportResult(output, manifest)


def _onnx_metadata(ckpt: Checkpoint, options: ExportOptions) -> dict[str, Any]:
    return {
        "pih2t.format": "pih2t-artifact/1",
        "pih2t.class_names": ckpt.class_names,
        "pih2t.class_counts": ckpt.class_counts,
        "pih2t.preprocessing": ckpt.meta["preprocessing"],
        "pih2t.logit_adjust_tau": options.logit_adjust_tau,
        "pih2t.meta": {k: v for k, v in ckpt.meta.items() if k not in ("class_names", "class_counts")},
    }


def _manifest(
    ckpt: Checkpoint, options: ExportOptions, fold_report: FoldReport, report: VerificationReport
) -> dict[str, Any]:
    prep = ckpt.preprocessing
    batch_dim: int | str = options.static_batch or "batch"
    export_settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    return {
        "model_file": "model.onnx",
        "model_format": options.format,
        "input": {"name": INPUT_NAME, "shape": [batch_dim, *prep.input_shape], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [batch_dim, ckpt.meta["num_classes"]], "dtype": "float32"},
        "meta": ckpt.meta,
        "export": export_settings,
        "fold": fold_report.to_dict(),
        "verification": [report.to_dict()],
        "versions": {**versions(), "onnx_runtime": ort.__version__},
    }
