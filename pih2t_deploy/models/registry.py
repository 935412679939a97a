"""The architecture registry: one name -> one factory of a classifier that exposes its feature map.

Every registered architecture builds an ``nn.Module`` that is a complete plain classifier
(``forward(x) -> logits``) and also offers ``forward_features(x) -> [B, C, H, W]`` (the final feature map
before pooling), ``num_features`` (C) and an ``fc`` attribute (the Linear head applied after global average
pooling). The PI-H2T network uses ``forward_features``; the fold writes its result into ``fc``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pih2t_deploy.errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    """What a caller needs to know about an architecture before building it."""

    name: str
    factory: Callable[[int, int], nn.Module]
    num_features: int
    default_input_size: int
    in_channels: tuple[int, ...]
    torchvision_name: str | None = None


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
    """The spec registered under ``name``; a ConfigError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; choose one of: {', '.join(arch_names())}") from None


def create_arch(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a randomly initialised plain classifier of architecture ``name`` with ``num_classes`` outputs."""
    spec = get_arch(name)
    if in_channels not in spec.in_channels:
        raise ConfigError(
            f"architecture {name!r} takes {' or '.join(map(str, spec.in_channels))} input channels, not {in_channels}"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    return spec.factory(num_classes, in_channels)
