"""Runtime: one Classifier interface over onnxruntime, OpenVINO, TensorRT and torch, loaded from an artifact."""

from pih2t_deploy.runtime.classifier import BACKENDS, Classifier, load_classifier

__all__ = ["BACKENDS", "Classifier", "load_classifier"]
