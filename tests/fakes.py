"""A fake Classifier for fast unit tests: a fixed linear map on 4x4 grayscale images, three classes.

It is a real ``Classifier`` (the interface every backend implements) whose logits are computed by hand-picked
numbers, so a test can state exactly what the service must answer without training or exporting a model.
"""

from __future__ import annotations

import numpy as np

from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo

LABELS = ["cat", "dog", "eel"]
COUNTS = [120, 30, 6]  # Many (> 100), Medium, Few (< 20) by the default thresholds
PREPROCESSING = Preprocessing(input_size=4, resize=4, mode="L", mean=(0.5,), std=(0.5,))


class FakeClassifier(Classifier):
    """logits = x.reshape(N, 16) @ WEIGHTS + BIAS, with ``calls`` recording every batch size it ran."""

    backend = "fake"
    # pixel i votes for class i % 3 and slightly against the others, later pixels more strongly
    WEIGHTS = np.array(
        [[(1.0 if i % 3 == c else -0.25) * (1 + i / 16) for c in range(3)] for i in range(16)], dtype=np.float32
    )
    BIAS = np.array([0.5, 0.0, -0.5], dtype=np.float32)

    def __init__(self, name: str = "fake", meta: dict | None = None) -> None:
        super().__init__(ModelInfo(name, "1", list(LABELS), list(COUNTS), PREPROCESSING, meta=meta or {}))
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return np.asarray(batch, np.float32).reshape(len(batch), 16) @ self.WEIGHTS + self.BIAS

    @staticmethod
    def voting_for(classes: list[int], strength: float = 2.0) -> np.ndarray:
        """Inputs [N, 1, 4, 4] whose top-1 class is ``classes[n]``: the pixels that vote for it lit."""
        rows = [[strength if i % 3 == c else 0.0 for i in range(16)] for c in classes]
        return np.asarray(rows, dtype=np.float32).reshape(-1, 1, 4, 4)

    @classmethod
    def expected(cls, batch: np.ndarray) -> np.ndarray:
        """What ``predict`` returns for ``batch``, computed independently in float64."""
        return batch.reshape(len(batch), 16).astype(np.float64) @ cls.WEIGHTS.astype(np.float64) + cls.BIAS
