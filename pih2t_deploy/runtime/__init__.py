"""Runtime: one Classifier interface over onnxruntime, OpenVINO, TensorRT and torch, loaded from an artifact."""

from pih2t_deploy.runtime.classifier import Classifier, ModelInfo
from pih2t_deploy.runtime.loader import BACKENDS, BackendName, load_classifier, read_artifact_info

__all__ = ["BACKENDS", "BackendName", "Classifier", "ModelInfo", "load_classifier", "read_artifact_info"]
