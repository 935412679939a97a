"""onnxruntime backend: CPU or CUDA execution provider, refusing to run on the wrong one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pih2t_deploy.errors import UserError, first_line
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxClassifier(Classifier):
    """An onnxruntime InferenceSession over the artifact's ONNX file."""

    backend = "onnxruntime"

    def __init__(self, path: Path, info: ModelInfo, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(info)
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise UserError(
                f"onnxruntime here has no {provider} (available: {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu with CUDA libraries, or use --device cpu"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle intra-op threads sleep instead of spinning: a spinning pool burns a core between calls that the
        # server's own threads (HTTP, decoding) need; measured in docs/performance.md (serving vs Triton)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=[provider])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"onnxruntime cannot load {path}: {first_line(exc)}") from None
        active = self.session.get_providers()[0]
        if active != provider:
            raise UserError(f"onnxruntime fell back to {active} although {provider} was requested; refusing to start")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, self.input_dtype)})[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "providers": self.session.get_providers(), "file": self.path.name}
