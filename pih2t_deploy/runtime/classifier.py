"""The Classifier interface: logits for a preprocessed batch, plus everything needed to preprocess and label
(``ModelInfo``). The backends implement it; ``runtime.loader`` picks and loads one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pih2t_deploy.artifact import Manifest
from pih2t_deploy.data.label_shift import PriorModel
from pih2t_deploy.data.longtail import softmax
from pih2t_deploy.data.preprocessing import Preprocessing


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: its name and version, labels, training counts, preprocessing, the checkpoint's
    metadata, and the artifact manifest it was loaded from (None for a checkpoint or a check-only model)."""

    name: str
    version: str
    labels: list[str]
    class_counts: list[int] | None
    preprocessing: Preprocessing
    meta: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None
    pixel_input: bool = False
    probabilities: bool = False

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.labels)

    @property
    def folded_tau(self) -> float:
        """The logit-adjustment tau folded into the model at export (0 for a checkpoint or none)."""
        return float((self.manifest.fold or {}).get("logit_adjust_tau", 0.0)) if self.manifest else 0.0

    @property
    def folded_temperature(self) -> float:
        """The temperature folded into the model at export (1 for a checkpoint or none)."""
        return float((self.manifest.fold or {}).get("temperature", 1.0)) if self.manifest else 1.0

    @property
    def prior_model(self) -> PriorModel | None:
        """What the model's answers assume about the class prior (``data.label_shift``); None when the
        artifact records no positive training count for every class."""
        counts = self.class_counts
        if not counts or len(counts) != self.num_classes or min(counts) <= 0:
            return None
        measured = ((self.manifest.accuracy if self.manifest else {}).get("label_shift") or {}).get("reference_prior")
        return PriorModel.from_artifact(counts, self.meta, self.folded_tau, measured, self.folded_temperature)


class Classifier(ABC):
    """A loaded model: ``predict(batch)`` maps float32 [N, C, H, W] to float32 logits [N, K]."""

    backend: str = ""
    parallel_batches: int = 1  # batches ``predict`` runs at once when called from that many threads

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
