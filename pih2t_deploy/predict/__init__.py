"""Offline prediction: classify a folder, a glob, a list file or an ImageFolder tree with an exported artifact.

``predict_images`` is the Python API (an iterator of ``PredictionRow``, one per image, in input order);
``pih2t-predict`` streams the same rows into a JSONL, CSV or Parquet file and can resume; ``--engine ray``
runs the same per-batch code on a Ray cluster (``ray_engine``). Nothing here imports torch.
"""

from pih2t_deploy.predict.local import predict_images
from pih2t_deploy.predict.rows import PredictionRow

__all__ = ["PredictionRow", "predict_images"]
