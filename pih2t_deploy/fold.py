"""Fold a trained PI-H2T network into a plain classifier and prove the fold exact (docs METHOD.md).

Global average pooling commutes with PIF's channel mean, so with g = GAP(X):
GAP(PIF(X)) = A g + c*1 with A = a*I - (b/C) 1 1^T. A linear head z = lws * (W g' + b0) therefore folds into
W' = lws * (W A) and b' = lws * (b0 + c W 1); post-hoc logit adjustment subtracts tau*log(prior) from b'.
Where a LayerNorm follows pooling (timm's ConvNeXt), PIF folds into the norm instead (eps / a^2, weight
sign(a) * weight; see models/timm_archs.py) and the Linear folds LWS and the adjustment.
A cosine head keeps A and c as one CxC Linear before the normalisation. The result is the registered plain
architecture (backbone, pooling, ``fc``) with no PIF, LWS or fusion code, unless PIF has an activation, which
cannot fold and then stays in the graph.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pih2t_deploy.data.label_shift import normalised_log_prior
from pih2t_deploy.data.longtail import log_prior
from pih2t_deploy.errors import ConfigError, VerificationError
from pih2t_deploy.models import PIH2TNet, create_arch
from pih2t_deploy.models.heads import CosineClassifier, CosineHead, LinearHead
from pih2t_deploy.models.pif import PIF
from pih2t_deploy.models.registry import FeatureBackbone

FOLD_TOLERANCE = 1e-4


@dataclass
class FoldReport:
    """What the fold did and how exact it is."""

    max_abs_diff: float
    max_rel_diff: float
    max_abs_diff_fp32: float
    tolerance: float
    pif_folded: bool
    pif_kept_in_graph: bool
    bn_fused: int
    logit_adjust_tau: float
    head: str
    parameters_before: int
    parameters_after: int
    adjustment: torch.Tensor = field(repr=False, compare=False)  # float64 [K], subtracted from the logits
    temperature: float = 1.0  # the adjusted logits are divided by it

    def to_dict(self) -> dict:
        """A JSON-safe dict of the report (without the adjustment vector; ``logit_adjust_tau`` says it)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "adjustment"}


class PIFClassifier(nn.Module):
    """A plain classifier with a non-foldable PIF (activation inside phi) kept before pooling."""

    def __init__(self, model: FeatureBackbone, pif: PIF) -> None:
        super().__init__()
        self.model = model
        self.pif = pif

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.fc(self.model.pool(self.pif(self.model.forward_features(x))))


def log_prior_tensor(class_counts: Sequence[int]) -> torch.Tensor:
    """The class log prior (``data.longtail.log_prior``) as a float64 tensor; a ConfigError naming the class
    when one has no training image (logit adjustment needs every count positive)."""
    try:
        return torch.from_numpy(log_prior(class_counts))
    except ValueError as exc:
        raise ConfigError(f"logit adjustment: {exc}") from None


def _pif_matrix(pif: PIF | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, c*1) in float64 such that GAP(PIF(X)) = A GAP(X) + c*1; identity when there is no PIF to fold."""
    if pif is None or not pif.is_affine:
        return torch.eye(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    coef = pif.affine_coefficients()
    matrix = coef.a * torch.eye(channels, dtype=torch.float64) - (coef.b / channels) * torch.ones(
        channels, channels, dtype=torch.float64
    )
    return matrix, torch.full((channels,), coef.c, dtype=torch.float64)


def _lws(head: LinearHead | CosineHead, num_classes: int) -> torch.Tensor:
    scale = head.lws
    return torch.ones(num_classes, dtype=torch.float64) if scale is None else scale.detach().double()


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        layer.bias.copy_(bias.float())
    return layer


def _fold_pif_into_norm(norm: nn.Module, pif: PIF) -> None:
    """PIF before a LayerNorm over channels, folded into the norm (timm_archs' docstring): the same output on the
    unfused vector with eps / a^2 and weight sign(a) * weight; in place."""
    a = pif.affine_coefficients().a
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None or a == 0:
        raise ConfigError(f"PIF cannot fold into the {type(norm).__name__} after pooling (a={a})")
    norm.eps = norm.eps / a**2
    with torch.no_grad():
        norm.weight.mul_(1.0 if a > 0 else -1.0)


def _fold_head(
    net: PIH2TNet, adjustment: torch.Tensor, *, pif_in_head: bool = True, temperature: float = 1.0
) -> nn.Module:
    """The plain head (one Linear, or the cosine classifier) equal to (PIF+head+LWS - adjustment) / temperature;
    without ``pif_in_head`` PIF was folded elsewhere (into a norm after pooling) and the head folds LWS only."""
    channels, num_classes = net.num_features, net.config.num_classes
    matrix, offset = _pif_matrix(net.pif if pif_in_head else None, channels)
    lws = _lws(net.head, num_classes)
    if isinstance(net.head, LinearHead):
        weight = net.head.fc.weight.detach().double()
        bias = net.head.fc.bias.detach().double()
        folded_weight = lws[:, None] * (weight @ matrix)
        folded_bias = lws * (bias + weight @ offset) - adjustment
        return _linear(folded_weight / temperature, folded_bias / temperature)
    if isinstance(net.head, CosineHead):
        folds_pif = pif_in_head and net.pif is not None and net.pif.is_affine
        pre: nn.Module = _linear(matrix, offset) if folds_pif else nn.Identity()
        weight = F.normalize(net.head.weight.detach().double(), dim=1)
        scaled = net.head.scale * lws[:, None] * weight
        return CosineClassifier(pre, _linear(scaled / temperature, -adjustment / temperature))
    raise TypeError(f"cannot fold head of type {type(net.head).__name__}")


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm2d into the convolution before it (named convX/bnX, or adjacent in a Sequential).

    Works in place on an eval-mode ``model`` (arithmetic in float64, stored as float32); each fused BatchNorm
    becomes ``nn.Identity``. Returns the count.
    """
    fused = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            if not isinstance(child, nn.BatchNorm2d):
                continue
            if name.startswith("bn"):
                conv_name = "conv" + name[2:]
            elif isinstance(parent, nn.Sequential) and name.isdigit() and int(name) > 0:
                conv_name = str(int(name) - 1)
            else:
                continue
            conv = children.get(conv_name)
            if isinstance(conv, nn.Conv2d):
                fused_conv = fuse_conv_bn_eval(copy.deepcopy(conv).double(), copy.deepcopy(child).double())
                setattr(parent, conv_name, fused_conv.float())
                setattr(parent, name, nn.Identity())
                fused += 1
    return fused


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fold(
    net: PIH2TNet,
    *,
    input_shape: Sequence[int],
    logit_adjust_tau: float = 0.0,
    class_counts: Sequence[int] | None = None,
    fuse_bn: bool = False,
    tolerance: float = FOLD_TOLERANCE,
    check_batch: int = 4,
    seed: int = 0,
    deployment_prior: Sequence[float] | None = None,
    temperature: float = 1.0,
) -> tuple[nn.Module, FoldReport]:
    """Return ``(plain_module, report)`` in eval mode, equal to ``net`` minus tau*log prior (plus log q for a
    ``deployment_prior`` q, normalised; see ``data.label_shift``), divided by ``temperature``, within tolerance.

    ``input_shape`` is (C, H, W) of the random inputs the check uses. The check runs both models in float64,
    so it measures the fold itself, not float32 rounding (reported apart as ``max_abs_diff_fp32``).
    ``net`` is not modified. Raises VerificationError, and returns nothing, when the largest float64 logit
    difference exceeds ``tolerance`` times max(1, largest |logit|): absolute for logits up to 1, relative above
    (storing BN-fused weights in float32 loses relative precision, not absolute).
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"the temperature must be a positive number, got {temperature}")
    net = copy.deepcopy(net).eval()
    config = net.config
    adjustment = torch.zeros(config.num_classes, dtype=torch.float64)
    if logit_adjust_tau:
        if class_counts is None:
            raise ConfigError("logit adjustment needs the training class counts (none are in the checkpoint)")
        adjustment = logit_adjust_tau * log_prior_tensor(class_counts)
    if deployment_prior is not None:
        try:
            adjustment = adjustment - torch.from_numpy(normalised_log_prior(deployment_prior, config.num_classes))
        except ValueError as exc:
            raise ConfigError(f"deployment prior: {exc}") from None
    plain = create_arch(config.arch, config.num_classes, config.in_channels)
    result = plain.load_state_dict(net.backbone.state_dict(), strict=False)
    if result.unexpected_keys or any(not key.startswith("fc.") for key in result.missing_keys):
        raise RuntimeError(f"backbone weights do not match {config.arch}: {result}")
    norm = getattr(plain, "pooled_norm", None)  # a timm head's norm after pooling (ConvNeXt)
    pif_into_norm = False
    if norm is not None and net.pif is not None and net.pif.is_affine:
        _fold_pif_into_norm(norm, net.pif)
        pif_into_norm = True
    plain.fc = _fold_head(net, adjustment, pif_in_head=not pif_into_norm, temperature=temperature)
    plain.eval()
    bn_fused = fuse_conv_bn(plain) if fuse_bn else 0
    folded: nn.Module = PIFClassifier(plain, net.pif) if net.pif is not None and not net.pif.is_affine else plain
    keeps_pif = folded is not plain
    folded.eval()
    compare = functools.partial(compare_logits, net, folded, input_shape, adjustment, check_batch, seed)
    max_abs, max_rel = compare(torch.float64, temperature=temperature)
    fp32_abs, _ = compare(temperature=temperature)
    report = FoldReport(
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        max_abs_diff_fp32=fp32_abs,
        tolerance=tolerance,
        pif_folded=net.pif is not None and not keeps_pif,
        pif_kept_in_graph=keeps_pif,
        bn_fused=bn_fused,
        logit_adjust_tau=float(logit_adjust_tau),
        head=config.head,
        parameters_before=_count(net),
        parameters_after=_count(folded),
        adjustment=adjustment,
        temperature=float(temperature),
    )
    allowed = tolerance * max(1.0, max_abs / max_rel if max_rel > 0 else 1.0)
    if not max_abs <= allowed:
        raise VerificationError(
            f"fold is not exact: max abs logit difference {max_abs:.3g} exceeds tolerance {allowed:.3g}"
        )
    return folded, report


@torch.no_grad()
def compare_logits(
    reference: nn.Module,
    candidate: nn.Module,
    input_shape: Sequence[int],
    adjustment: torch.Tensor,
    batch: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    temperature: float = 1.0,
) -> tuple[float, float]:
    """Largest absolute and relative difference between ``(reference - adjustment) / temperature`` and
    ``candidate`` logits.

    Both run on the same seeded standard-normal inputs, in ``dtype`` (copies are made for float64).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=generator, dtype=dtype)
    if dtype != torch.float32:
        reference, candidate = copy.deepcopy(reference).to(dtype), copy.deepcopy(candidate).to(dtype)
    expected = (reference(x).double() - adjustment) / temperature
    actual = candidate(x).double()
    max_abs = float((expected - actual).abs().max())
    return max_abs, float(max_abs / max(float(expected.abs().max()), 1e-12))
