"""torchvision ResNet-family definitions, with ``forward_features`` added and nothing else changed.

The classes subclass torchvision's ``ResNet`` without new parameters or buffers, so their state dicts load
with ``strict=True`` into ``torchvision.models.<name>(num_classes=K)`` and their ``forward`` is torchvision's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from pih2t_deploy.models.registry import FeatureBackbone

_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int], dict[str, Any]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
}


class FeatureResNet(ResNet, FeatureBackbone):
    """torchvision's ResNet plus ``forward_features`` (stem and the four stages, before pooling)."""

    # the modules torchvision's ResNet builds, named for the type checker
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu: nn.ReLU
    maxpool: nn.MaxPool2d
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, arch: str, num_classes: int) -> None:
        block, layers, kwargs = _LAYOUTS[arch]
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        self.num_features = 512 * block.expansion  # the input width of torchvision's fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def torchvision_arch_names() -> list[str]:
    """Names of the torchvision architectures this module can build."""
    return list(_LAYOUTS)


def feature_resnet(arch: str, num_classes: int) -> FeatureResNet:
    """A randomly initialised ``FeatureResNet`` of torchvision architecture ``arch``."""
    return FeatureResNet(arch, num_classes)


def torchvision_factory(arch: str, num_classes: int, in_channels: int) -> FeatureResNet:
    """The registry's factory for ``arch`` (torchvision ResNets take 3 channels; the registry checks that)."""
    return feature_resnet(arch, num_classes)
