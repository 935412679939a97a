"""Logits of a PyTorch model over a data loader (what training and ``pih2t-eval`` score)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, K] float32, targets [N]) over ``loader`` with ``model`` in eval mode."""
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        outputs.append(model(images.to(device)).float().cpu())
        targets.append(labels)
    return torch.cat(outputs).numpy(), torch.cat(targets).numpy()
