"""Loading a model: which backend runs which file, and ``load_classifier`` for an artifact or a checkpoint.

``load_classifier(path, backend=...)`` accepts an artifact folder (``model.json`` beside the model file),
an ``.onnx`` / ``.pt2`` / ``.plan`` / ``.xml`` file inside such a folder, or a ``model.pt`` checkpoint (torch
backend, folded on load). The preprocessing always comes from the artifact's metadata, never from defaults.
Each backend module is imported only when it is asked for, and none of them imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pih2t_deploy.artifact import Manifest, read_labels, read_manifest, verify_files
from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.errors import ConfigError, UserError
from pih2t_deploy.formats import FORMATS, formats_of_backend
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo

BackendName = Literal["onnxruntime", "openvino", "torch", "tensorrt"]
PerformanceHint = Literal["latency", "throughput"]
BACKENDS: tuple[str, ...] = get_args(BackendName)


def read_artifact_info(folder: Path, name: str | None = None) -> ModelInfo:
    """ModelInfo from an artifact folder (its manifest and labels, read through ``pih2t_deploy.artifact``)
    after checking every file against the sha256 the manifest records; one-line UserErrors when they are
    absent, unreadable, changed or of a newer format."""
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    meta = manifest.meta
    try:
        prep = Preprocessing.from_dict(meta["preprocessing"])
        labels = read_labels(folder, int(meta["num_classes"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{folder}: unreadable artifact metadata ({exc})") from None
    return ModelInfo(
        name=name or meta.get("recipe") or "pih2t",
        version=manifest.version,
        labels=labels,
        class_counts=meta.get("class_counts"),
        preprocessing=prep,
        meta=meta,
        manifest=manifest,
        pixel_input=manifest.pixel_input,
        probabilities=manifest.probabilities,
    )


def load_classifier(
    path: str | Path,
    backend: str = "onnxruntime",
    *,
    device: str = "cpu",
    threads: int | None = None,
    name: str | None = None,
    performance_hint: PerformanceHint = "latency",
) -> Classifier:
    """Load the model at ``path`` with ``backend``; a UserError says what is missing or mismatched.
    ``performance_hint`` throughput (OpenVINO only) runs several batches at once on OpenVINO's streams."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if performance_hint != "latency" and backend != "openvino":
        raise ConfigError(
            f"--performance-hint {performance_hint} applies to --backend openvino only; leave it out for {backend}"
        )
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; choose cpu or cuda")
    target = Path(path)
    if not target.exists():
        raise UserError(f"model {target} does not exist; pass an artifact folder written by pih2t-export")
    if target.is_file() and target.suffix == ".pt":
        from pih2t_deploy.runtime.torch_backend import TorchClassifier

        if backend != "torch":
            raise ConfigError(f"{target} is a checkpoint: serve it with --backend torch, or export it first")
        return TorchClassifier.from_checkpoint(target, device=device, threads=threads, name=name)
    if backend == "tensorrt":
        from pih2t_deploy.runtime.tensorrt_backend import import_tensorrt

        import_tensorrt()
    folder = target if target.is_dir() else target.parent
    info = read_artifact_info(folder, name)
    model_file = target if target.is_file() else _model_file(folder, backend, info.manifest)
    if info.manifest is not None and model_file.name not in info.manifest.files:
        raise UserError(f"{model_file} is not a file of the artifact in {folder} (model.json does not list it)")
    if backend == "onnxruntime":
        from pih2t_deploy.runtime.onnx_backend import OnnxClassifier

        return OnnxClassifier(model_file, info, device=device, threads=threads)
    if backend == "openvino":
        from pih2t_deploy.runtime.openvino_backend import OpenVINOClassifier

        return OpenVINOClassifier(model_file, info, device=device, threads=threads, hint=performance_hint)
    if backend == "torch":
        from pih2t_deploy.runtime.torch_backend import TorchClassifier

        return TorchClassifier.from_program(model_file, info, device=device, threads=threads)
    from pih2t_deploy.runtime.tensorrt_backend import TensorRTClassifier

    return TensorRTClassifier(model_file, info, device=device)


def _model_file(folder: Path, backend: str, manifest: Manifest | None) -> Path:
    """The artifact's own model file when its format runs on ``backend``; else the first file of a format that
    does (by the format table); a UserError naming what is missing."""
    own = FORMATS.get(manifest.model_format) if manifest else None
    if manifest and own and own.backend == backend:
        return folder / manifest.model_file
    wanted = list(dict.fromkeys(spec.model_file for spec in formats_of_backend(backend)))
    for candidate in wanted:
        if (folder / candidate).is_file():
            return folder / candidate
    raise UserError(f"{folder} has no {' or '.join(wanted)} for backend {backend}; export that format first")
