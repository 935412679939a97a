"""The architecture registry: one name -> one factory of a classifier that exposes its feature map.

Every registered architecture builds an ``nn.Module`` that is a complete plain classifier
(``forward(x) -> logits``) and also offers ``forward_features(x) -> [B, C, H, W]`` (the final feature map
before pooling), ``num_features`` (C) and an ``fc`` attribute (the Linear head applied after global average
pooling). The PI-H2T network uses ``forward_features``; the fold writes its result into ``fc``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.errors import ConfigError


class FeatureBackbone(nn.Module):
    """What every registered architecture builds (module docstring): a plain classifier with its feature map
    (``forward_features``), the map's channels (``num_features``) and the Linear head ``fc``."""

    num_features: int
    fc: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map [B, C, H, W], before pooling."""
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """The [B, C] vector ``fc`` takes: global average pooling (a timm backbone may add a norm after it)."""
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)


@dataclass(frozen=True)
class ArchSpec:
    """What a caller needs to know about an architecture before building it."""

    name: str
    factory: Callable[[int, int], FeatureBackbone]
    num_features: int
    default_input_size: int
    in_channels: tuple[int, ...]
    input_sizes: tuple[int, int]


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def arch_names() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_arch(name: str) -> ArchSpec:
    """The spec registered under ``name``, or of the timm model ``timm/<model>``; a ConfigError listing the
    known names otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm/"):
        from pih2t_deploy.models.timm_archs import timm_spec

        return timm_spec(name)
    raise ConfigError(
        f"unknown architecture {name!r}; choose one of: {', '.join(arch_names())}, or timm/<model> (a timm CNN)"
    )


def check_input_fits(name: str, input_size: int, channels: int) -> None:
    """ConfigError, saying how to fix it, when ``input_size`` x ``input_size`` images with ``channels`` channels
    are not what architecture ``name`` is built for (e.g. 224-pixel photos fed to the 8x8 ``digits_net``
    train at chance level)."""
    spec = get_arch(name)
    low, high = spec.input_sizes
    if not low <= input_size <= high:
        fitting = [a for a in arch_names() if get_arch(a).input_sizes[0] <= input_size <= get_arch(a).input_sizes[1]]
        side = spec.default_input_size
        resize = f"set data.input_size/data.resize to fit (e.g. data.input_size={side} data.resize={side})"
        raise ConfigError(
            f"model.arch={name} is built for {low}..{high}-pixel inputs but the preprocessing gives "
            f"{input_size}x{input_size} (data.input_size); "
            + (f"choose model.arch from {', '.join(fitting)}, or {resize}" if fitting else resize)
        )
    if channels not in spec.in_channels:
        modes = " or ".join("data.mode=L" if c == 1 else "data.mode=RGB" for c in spec.in_channels)
        raise ConfigError(f"model.arch={name} takes {'/'.join(map(str, spec.in_channels))}-channel images: set {modes}")


def create_arch(name: str, num_classes: int, in_channels: int = 3) -> FeatureBackbone:
    """Build a randomly initialised plain classifier of architecture ``name`` with ``num_classes`` outputs."""
    spec = get_arch(name)
    if in_channels not in spec.in_channels:
        raise ConfigError(
            f"architecture {name!r} takes {' or '.join(map(str, spec.in_channels))} input channels, not {in_channels}"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    return spec.factory(num_classes, in_channels)
