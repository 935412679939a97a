"""The Classifier interface: logits for a preprocessed batch, plus everything needed to preprocess and label.

``load_classifier(path, backend=...)`` accepts an artifact folder (``model.json`` beside the model file),
an ``.onnx`` / ``.pt2`` / ``.plan`` file inside such a folder, or a ``model.pt`` checkpoint (torch backend,
folded on load). The preprocessing always comes from the artifact's metadata, never from defaults.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from pih2t_deploy.data.longtail import softmax
from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.errors import ConfigError, UserError

BackendName = Literal["onnxruntime", "openvino", "torch", "tensorrt"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
MODEL_FILES = {
    "onnxruntime": ("model.onnx", "model.int8.onnx"),
    "openvino": ("model.xml",),
    "torch": ("model.pt2",),
    "tensorrt": ("model.plan",),
}


@dataclass(frozen=True)
class ModelInfo:
    """What the artifact says about the model it holds."""

    name: str
    version: str
    labels: list[str]
    class_counts: list[int] | None
    preprocessing: Preprocessing
    manifest: dict[str, Any]
    pixel_input: bool = False
    probabilities: bool = False

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.labels)


class Classifier(ABC):
    """A loaded model: ``predict(batch)`` maps float32 [N, C, H, W] to float32 logits [N, K]."""

    backend: str = ""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one input: (C, H, W) floats, or (H, W, C) uint8 pixels for embedded preprocessing."""
        c, h, w = self.info.preprocessing.input_shape
        return (h, w, c) if self.info.pixel_input else (c, h, w)

    @property
    def input_dtype(self) -> type[np.generic]:
        """numpy dtype of the input: uint8 pixels (embedded preprocessing) or float32."""
        return np.uint8 if self.info.pixel_input else np.float32

    def prepare(self, images: list) -> np.ndarray:
        """The input batch for decoded PIL images, by the artifact's own preprocessing."""
        prep = self.info.preprocessing
        return prep.to_pixels(images) if self.info.pixel_input else prep.to_numpy(images)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities: the outputs themselves if the graph ends in softmax, else their softmax."""
        return outputs.astype(np.float64) if self.info.probabilities else softmax(outputs)

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch; the batch may be any size from 1 to the backend's limit."""

    def describe(self) -> dict[str, Any]:
        """Backend name and details (provider, device) for logs and metadata endpoints."""
        return {"backend": self.backend}


def read_artifact_info(folder: Path, name: str | None = None) -> ModelInfo:
    """ModelInfo from an artifact folder's ``model.json`` and ``labels.txt``; clear errors if they are absent."""
    manifest_path = folder / "model.json"
    if not manifest_path.is_file():
        raise UserError(f"{folder} is not an exported artifact (no model.json); run pih2t-export first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        meta = manifest["meta"]
        labels = (folder / "labels.txt").read_text(encoding="utf-8").splitlines()
        prep = Preprocessing.from_dict(meta["preprocessing"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{folder}: unreadable artifact metadata ({exc})") from None
    if len(labels) != meta["num_classes"]:
        raise UserError(f"{folder}: labels.txt has {len(labels)} lines for {meta['num_classes']} classes")
    version = manifest.get("files", {}).get(manifest.get("model_file", ""), "")[:12] or "1"
    return ModelInfo(
        name=name or meta.get("recipe") or "pih2t",
        version=version,
        labels=labels,
        class_counts=meta.get("class_counts"),
        preprocessing=prep,
        manifest=manifest,
        pixel_input=manifest.get("input", {}).get("dtype") == "uint8",
        probabilities=manifest.get("output", {}).get("kind") == "probabilities",
    )


def load_classifier(
    path: str | Path,
    backend: str = "onnxruntime",
    *,
    device: str = "cpu",
    threads: int | None = None,
    name: str | None = None,
) -> Classifier:
    """Load the model at ``path`` with ``backend``; a UserError says what is missing or mismatched."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
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
    model_file = target if target.is_file() else _find_model_file(folder, backend)
    if backend == "onnxruntime":
        from pih2t_deploy.runtime.onnx_backend import OnnxClassifier

        return OnnxClassifier(model_file, info, device=device, threads=threads)
    if backend == "openvino":
        from pih2t_deploy.runtime.openvino_backend import OpenVINOClassifier

        return OpenVINOClassifier(model_file, info, device=device, threads=threads)
    if backend == "torch":
        from pih2t_deploy.runtime.torch_backend import TorchClassifier

        return TorchClassifier.from_program(model_file, info, device=device, threads=threads)
    from pih2t_deploy.runtime.tensorrt_backend import TensorRTClassifier

    return TensorRTClassifier(model_file, info, device=device)


def _find_model_file(folder: Path, backend: str) -> Path:
    for candidate in MODEL_FILES[backend]:
        if (folder / candidate).is_file():
            return folder / candidate
    wanted = " or ".join(MODEL_FILES[backend])
    raise UserError(f"{folder} has no {wanted} for backend {backend}; export that format first")
