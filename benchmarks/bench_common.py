"""What the serving benchmarks share: a ResNet-50 PI-H2T artifact with random weights and a test JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(size: int = 256) -> bytes:
    """A random-noise RGB JPEG of ``size`` x ``size`` pixels (quality 90)."""
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def resnet50_artifact(folder: Path) -> Path:
    """Export a ResNet-50 PI-H2T checkpoint (random weights, 100 classes, 224x224) to ONNX under ``folder``."""
    from pih2t_deploy.checkpoint import build_meta, save_checkpoint
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.options import ExportOptions
    from pih2t_deploy.models import NetworkConfig, PIH2TNet

    net = PIH2TNet(NetworkConfig(arch="resnet50", num_classes=100, method="pih2t")).eval()
    ckpt = save_checkpoint(folder / "model.pt", net, build_meta(net.config, class_counts=list(range(200, 100, -1))))
    export_checkpoint(ckpt, ExportOptions(output=folder / "export", max_batch=2))
    return folder / "export"
