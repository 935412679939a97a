"""timm CNNs as PI-H2T backbones: ``model.arch=timm/<name>`` (e.g. timm/resnet50, timm/convnext_tiny,
timm/efficientnet_b0, timm/resnet10t).

PIF and H2TF work on the final feature map; the fold needs the head after it to be global average pooling,
optionally followed by a normalisation over channels (ConvNeXt's LayerNorm), then the Linear classifier.
Whether a model's head is that is not guessed from its class: ``timm_spec`` runs the model's own
``forward_head(pre_logits=True)`` on a random feature map and compares it with average pooling (and the norm);
anything else (an MLP or a convolution after pooling, as in MobileNetV3; a token head, as in ViT) is refused
with the reason, because PIF could not be folded away exactly.

With a norm after pooling, PIF still folds exactly: PIF without activation maps the pooled vector g to
a*g - b*mean(g) + c, whose centred value is a*(g - mean(g)) and whose variance is a^2 var(g), so a LayerNorm
over channels with eps and weight w gives the same output on g with eps / a^2 and weight sign(a) * w
(``fold.py`` applies it).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.data.backbone_defaults import IMAGENET_CROP_PCT, BackboneDefaults
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.models.registry import ArchSpec, FeatureBackbone

PREFIX = "timm/"
INPUT_SIZES = (16, 2048)  # a timm ResNet at 32 px has a 1x1 final map and still trains, folds and exports


def import_timm() -> Any:
    """The timm package, or a ConfigError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model.arch=timm/... needs timm: pip install 'pih2t-deploy[train]'") from None
    return timm


class TimmBackbone(FeatureBackbone):
    """A timm model without its classifier (``body``), its pooling (+ norm) as ``pool`` and a new ``fc``."""

    def __init__(self, model_name: str, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.model_name = model_name
        self.body = import_timm().create_model(model_name, pretrained=False, num_classes=0, in_chans=in_channels)
        self.num_features = int(self.body.num_features)
        self.fc = nn.Linear(self.num_features, num_classes)

    @property
    def pooled_norm(self) -> nn.Module | None:
        """The normalisation timm applies after pooling (ConvNeXt's head.norm), or None."""
        head = getattr(self.body, "head", None)
        norm = getattr(head, "norm", None)
        return None if norm is None or isinstance(norm, nn.Identity) else norm

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(fmap, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)))


def _expected_pool(backbone: TimmBackbone, fmap: torch.Tensor) -> torch.Tensor:
    pooled = F.adaptive_avg_pool2d(fmap, 1)
    norm = backbone.pooled_norm
    return torch.flatten(norm(pooled) if norm is not None else pooled, 1)


def check_foldable_head(backbone: TimmBackbone) -> None:
    """ConfigError naming the model when its head is not average pooling (+ a channel norm) before the
    classifier, by running the head on a random feature map (module docstring)."""
    name = f"{PREFIX}{backbone.model_name}"
    fmap = torch.randn(2, backbone.num_features, 3, 3, generator=torch.Generator().manual_seed(0))
    backbone.eval()
    try:
        with torch.no_grad():
            actual, expected = backbone.pool(fmap), _expected_pool(backbone, fmap)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(
            f"model.arch={name}: its head does not take a [B, C, H, W] feature map ({type(exc).__name__}); only "
            "CNN heads of global average pooling (+ a norm) and a Linear layer can be folded (token heads cannot)"
        ) from None
    if actual.ndim != 2:
        raise ConfigError(
            f"model.arch={name}: its head gives {list(actual.shape)} for a [2, C, 3, 3] feature map, not the pooled "
            f"[2, C] (a token head?); only CNN heads of global average pooling (+ a norm) and a Linear layer fold"
        )
    if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=1e-5):
        raise ConfigError(
            f"model.arch={name}: its head does more than global average pooling (+ a norm) before the classifier "
            "(e.g. an MLP or a convolution after pooling), so PIF cannot be folded into it exactly; choose a timm "
            "CNN such as timm/resnet50, timm/convnext_tiny or timm/efficientnet_b0"
        )
    norm = backbone.pooled_norm
    if norm is not None and not _is_channel_layer_norm(norm):
        raise ConfigError(f"model.arch={name}: the norm after pooling is {type(norm).__name__}, not a LayerNorm")


def _is_channel_layer_norm(norm: nn.Module) -> bool:
    return isinstance(norm, nn.LayerNorm) and norm.weight is not None and len(norm.normalized_shape) == 1


def pretrained_defaults(arch: str) -> BackboneDefaults | None:
    """The preprocessing of timm model ``arch``'s pretrained configuration (its training input size and crop
    fraction, as timm's own fine-tuning uses; a crop mode other than centre keeps ImageNet's fraction); None
    for other architectures or a configuration without mean and std."""
    if not arch.startswith(PREFIX):
        return None
    cfg = import_timm().get_pretrained_cfg(arch.removeprefix(PREFIX))
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    interpolation = cfg.interpolation if cfg.interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
    centre = cfg.crop_pct is not None and cfg.crop_mode in (None, "center")
    return BackboneDefaults(
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        interpolation=interpolation,
        input_size=int(cfg.input_size[-1]),
        crop_pct=float(cfg.crop_pct) if centre else IMAGENET_CROP_PCT,
    )


@functools.cache
def timm_spec(arch: str) -> ArchSpec:
    """The registry entry of ``arch`` ("timm/<model name>"), built on first use; ConfigError for an unknown
    model or a head that cannot be folded."""
    timm = import_timm()
    model_name = arch.removeprefix(PREFIX)
    if not model_name or not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name[:6]}*")[:8] if model_name else []
        hint = f"; similar: {', '.join(PREFIX + m for m in close)}" if close else ""
        raise ConfigError(f"unknown timm model {model_name!r} in model.arch={arch}{hint}")
    probe = TimmBackbone(model_name, 2, 3)
    check_foldable_head(probe)
    size = int(probe.body.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return ArchSpec(arch, functools.partial(TimmBackbone, model_name), probe.num_features, size, (1, 3), INPUT_SIZES)
