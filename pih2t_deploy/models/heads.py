"""Classifier heads on pooled features: linear or cosine, each with optional learnable weight scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """z = lws * (W g + b); ``lws`` is a learnable per-class scale (fixed at 1 unless ``lws=True``)."""

    def __init__(self, in_features: int, num_classes: int, lws: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.lws = nn.Parameter(torch.ones(num_classes)) if lws else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.fc(features)
        return logits * self.lws if self.lws is not None else logits


class CosineHead(nn.Module):
    """z = lws * s * cos(g, w_k): features and class weights L2-normalised, fixed scale ``s``."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0, lws: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = float(scale)
        self.lws = nn.Parameter(torch.ones(num_classes)) if lws else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()
        return logits * self.lws if self.lws is not None else logits


class CosineClassifier(nn.Module):
    """The folded form of a cosine head: ``fc(normalize(pre(g)))`` with the scale and LWS inside ``fc``.

    ``pre`` is the folded PIF (one CxC Linear) or ``nn.Identity`` when the model has no PIF.
    """

    def __init__(self, pre: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.pre = pre
        self.fc = fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(F.normalize(self.pre(features), dim=1))
