"""Long-tailed losses: cross-entropy, LDAM with deferred re-weighting, balanced softmax and GCL.

Every loss is called as ``loss(logits, targets, epoch)``; ``epoch`` (0-based) drives LDAM's deferred
re-weighting. Mixup is applied by the engine around any of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.errors import ConfigError

LOSSES = ("ce", "ldam", "balanced_softmax", "gcl")


def _log_prior(counts: Sequence[int]) -> torch.Tensor:
    counts_t = torch.tensor(list(counts), dtype=torch.float32).clamp(min=1)
    return torch.log(counts_t / counts_t.sum())


class CrossEntropy(nn.Module):
    """Plain cross-entropy."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class LDAMLoss(nn.Module):
    """Label-distribution-aware margins m_c proportional to n_c^(-1/4) (largest ``max_margin``), scale ``s``;
    from epoch ``drw_epoch`` on, class weights from the effective number of samples (``beta``)."""

    def __init__(
        self,
        counts: Sequence[int],
        max_margin: float = 0.5,
        s: float = 30.0,
        drw_epoch: int = 160,
        beta: float = 0.9999,
    ) -> None:
        super().__init__()
        counts_t = torch.tensor(list(counts), dtype=torch.float64).clamp(min=1)
        margins = counts_t ** (-0.25)
        self.register_buffer("margins", (margins * (max_margin / margins.max())).float())
        effective = (1.0 - beta**counts_t) / (1.0 - beta)
        weights = 1.0 / effective
        self.register_buffer("drw_weights", (weights * len(counts_t) / weights.sum()).float())
        self.s, self.drw_epoch = s, drw_epoch

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        margin = F.one_hot(targets, logits.shape[1]).to(logits.dtype) * self.margins.to(logits.dtype)
        weight = self.drw_weights.to(logits.dtype) if epoch >= self.drw_epoch else None
        return F.cross_entropy(self.s * (logits - margin), targets, weight=weight)


class BalancedSoftmax(nn.Module):
    """Logit-adjusted cross-entropy: CE(z + tau * log prior)."""

    def __init__(self, counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("adjust", tau * _log_prior(counts))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjust.to(logits.dtype), targets)


class GCLLoss(nn.Module):
    """Gaussian clouded logits for a cosine head with scale ``scale``.

    Each class's cosine is lowered by ``noise_mul * |eps| * m_c`` (eps ~ N(0, 1/3) clipped to [-1, 1];
    m_c = log n_max - log n_c, normalised to [0, 1]), so tail classes get larger clouds, then the logits are
    logit-adjusted by log prior. The perturbation is a training device only.
    """

    def __init__(self, counts: Sequence[int], scale: float, noise_mul: float = 0.5) -> None:
        super().__init__()
        log_counts = torch.log(torch.tensor(list(counts), dtype=torch.float32).clamp(min=1))
        spread = log_counts.max() - log_counts
        self.register_buffer("m", spread / spread.max().clamp(min=1e-12))
        self.register_buffer("adjust", _log_prior(counts))
        self.scale, self.noise_mul = scale, noise_mul

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        noise = (torch.randn_like(logits) / 3**0.5).clamp(-1, 1).abs()
        cosine = logits / self.scale - self.noise_mul * noise * self.m.to(logits.dtype)
        return F.cross_entropy(self.scale * cosine + self.adjust.to(logits.dtype), targets)


def build_loss(name: str, counts: Sequence[int], *, head: str, cosine_scale: float, **params: float) -> nn.Module:
    """The loss called ``name`` for training counts ``counts``; GCL needs the cosine head."""
    try:
        return _build(name, counts, head=head, cosine_scale=cosine_scale, **params)
    except TypeError as exc:
        raise ConfigError(f"loss {name!r} does not take these parameters: {sorted(params)} ({exc})") from None


def _build(name: str, counts: Sequence[int], *, head: str, cosine_scale: float, **params: float) -> nn.Module:
    if name == "ce":
        return CrossEntropy(**params)
    if name == "ldam":
        return LDAMLoss(counts, **params)
    if name == "balanced_softmax":
        return BalancedSoftmax(counts, **params)
    if name == "gcl":
        if head != "cosine":
            raise ConfigError("loss gcl needs model.head=cosine")
        return GCLLoss(counts, cosine_scale, **params)
    raise ConfigError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
