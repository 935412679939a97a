"""Long-tailed losses: cross-entropy, LDAM with deferred re-weighting, balanced softmax and GCL.

Every loss is called as ``loss(logits, targets, epoch)``; ``epoch`` (0-based, within the stage) drives LDAM's
deferred re-weighting. Mixup is applied by the engine around any of them. LDAM and GCL are margin losses on
cosine similarities: they need the cosine head, whose logits are ``cosine_scale * cos``; they divide that
scale out and apply their own scale ``s`` (as the authors' code does with its normalised linear layer).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.data.longtail import log_prior
from pih2t_deploy.errors import ConfigError

LossName = Literal["ce", "ldam", "balanced_softmax", "gcl"]
LOSSES: tuple[str, ...] = get_args(LossName)
COSINE_LOSSES = ("ldam", "gcl")


def require_head_for_loss(name: str, head: str) -> None:
    """ConfigError unless ``head`` is one that loss ``name`` is defined on (LDAM and GCL: the cosine head)."""
    if name in COSINE_LOSSES and head != "cosine":
        raise ConfigError(f"loss {name} works on cosine similarities: set model.head=cosine")


class CrossEntropy(nn.Module):
    """Plain cross-entropy."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class LDAMLoss(nn.Module):
    """LDAM-DRW as published (Cao et al. 2019; the H2T code's ``LDAMLoss``).

    Margin m_k = C / n_k^(1/4), scaled so the largest is ``max_m``, subtracted from the target class's cosine;
    loss CE(s * (cos - m_y one-hot)). Deferred re-weighting: from the first epoch *after* ``reweight_epoch``
    (``epoch > reweight_epoch``, 0-based, as the H2T code's hook compares) classes are weighted by the inverse
    effective number (1 - beta) / (1 - beta^n_k), normalised to sum to the number of classes; -1 never does.
    """

    def __init__(
        self,
        counts: Sequence[int],
        cosine_scale: float,
        max_m: float = 0.5,
        s: float = 30.0,
        reweight_epoch: int = 160,
        beta: float = 0.9999,
    ) -> None:
        super().__init__()
        counts_t = torch.tensor(list(counts), dtype=torch.float64).clamp(min=1)
        self.margins: torch.Tensor
        self.drw_weights: torch.Tensor
        margins = counts_t ** (-0.25)
        self.register_buffer("margins", (margins * (max_m / margins.max())).float())
        weights = (1.0 - beta) / (1.0 - beta**counts_t)
        self.register_buffer("drw_weights", (weights * len(counts_t) / weights.sum()).float())
        self.cosine_scale, self.s, self.reweight_epoch = cosine_scale, s, int(reweight_epoch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        cosine = logits / self.cosine_scale
        margin = F.one_hot(targets, logits.shape[1]).to(logits.dtype) * self.margins.to(logits.dtype)
        reweight = self.reweight_epoch >= 0 and epoch > self.reweight_epoch
        weight = self.drw_weights.to(logits.dtype) if reweight else None
        return F.cross_entropy(self.s * (cosine - margin), targets, weight=weight)


class BalancedSoftmax(nn.Module):
    """Logit-adjusted cross-entropy: CE(z + tau * log prior)."""

    def __init__(self, counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        try:
            prior = torch.from_numpy(log_prior(counts)).float()
        except ValueError as exc:
            raise ConfigError(f"balanced_softmax: {exc}") from None
        self.adjust: torch.Tensor
        self.register_buffer("adjust", tau * prior)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjust.to(logits.dtype), targets)


class GCLLoss(nn.Module):
    """Gaussian clouded logits as published (Li et al. 2022, the GCLLoss code).

    m_k = log n_max - log n_k. Every cosine is lowered by ``noise_mul * |eps| * m_k / max(m)`` with eps drawn
    from N(0, std 1/3) and clamped to [-1, 1] (tail classes get the largest clouds); the target's cosine also
    by the margin ``m``; then the focal loss with ``gamma`` on CE(s * output) (``gamma`` 0 is the plain mean
    CE). Published settings: stage 1 m 0, s 30; classifier re-training m 0.1, s 20, gamma 1; noise_mul 0.5.
    """

    def __init__(
        self,
        counts: Sequence[int],
        cosine_scale: float,
        m: float = 0.0,
        s: float = 30.0,
        noise_mul: float = 0.5,
        gamma: float = 0.0,
    ) -> None:
        super().__init__()
        log_counts = torch.log(torch.tensor(list(counts), dtype=torch.float32).clamp(min=1))
        spread = log_counts.max() - log_counts
        self.cloud: torch.Tensor
        self.register_buffer("cloud", spread / spread.max().clamp(min=1e-12))
        self.cosine_scale, self.m, self.s, self.noise_mul, self.gamma = cosine_scale, m, s, noise_mul, gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        cosine = logits / self.cosine_scale
        noise = (torch.randn_like(cosine) / 3.0).clamp(-1, 1).abs()
        clouded = cosine - self.noise_mul * noise * self.cloud.to(cosine.dtype)
        output = clouded - self.m * F.one_hot(targets, logits.shape[1]).to(cosine.dtype)
        per_sample = F.cross_entropy(self.s * output, targets, reduction="none")
        return (focal_weight(per_sample, self.gamma) * per_sample).mean()


def focal_weight(per_sample_ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p_target)^gamma with p_target = exp(-CE), detached from the graph (as the GCL code's focal term)."""
    return (1.0 - torch.exp(-per_sample_ce.detach())) ** gamma


def loss_parameters(name: str) -> list[str]:
    """The parameters loss ``name`` takes in ``loss.params`` / ``loss.stage2_params`` (sorted)."""
    classes: dict[str, type[nn.Module]] = {
        "ce": CrossEntropy,
        "ldam": LDAMLoss,
        "balanced_softmax": BalancedSoftmax,
        "gcl": GCLLoss,
    }
    signature = inspect.signature(classes[name])
    return sorted(set(signature.parameters) - {"self", "counts", "cosine_scale", "args", "kwargs"})


def build_loss(name: str, counts: Sequence[int], *, head: str, cosine_scale: float, **params: Any) -> nn.Module:
    """The loss called ``name`` for training counts ``counts`` with ``params``; LDAM and GCL need the cosine
    head (ConfigError otherwise), an unknown name or parameter is a ConfigError naming it."""
    require_head_for_loss(name, head)
    try:
        return _build(name, counts, cosine_scale=cosine_scale, **params)
    except TypeError as exc:
        raise ConfigError(f"loss {name!r} does not take these parameters: {sorted(params)} ({exc})") from None


def _build(name: str, counts: Sequence[int], *, cosine_scale: float, **params: Any) -> nn.Module:
    if name == "ce":
        return CrossEntropy(**params)
    if name == "ldam":
        return LDAMLoss(counts, cosine_scale, **params)
    if name == "balanced_softmax":
        return BalancedSoftmax(counts, **params)
    if name == "gcl":
        return GCLLoss(counts, cosine_scale, **params)
    raise ConfigError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
