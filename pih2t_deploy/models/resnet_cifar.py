"""CIFAR-style ResNet-32: 3 stages of 16/32/64 channels, 5 basic blocks each, parameter-free shortcuts.

Parameter names follow the layout of the H2T authors' public code (conv1, bn1, layer1..layer3 of blocks with
conv1/bn1/conv2/bn2), so their checkpoints import without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.models.registry import FeatureBackbone


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels equally on both sides (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.pad_channels = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_channels, self.pad_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(FeatureBackbone):
    """A plain classifier: ``forward_features`` gives the [B, 64, H/4, W/4] map, ``fc`` the logits."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.num_features = 64
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, strides, in_planes = (16, 32, 64), (1, 2, 2), 16
        for index, (width, stride) in enumerate(zip(widths, strides, strict=True), start=1):
            blocks = []
            for block_stride in [stride] + [1] * (blocks_per_stage - 1):
                blocks.append(BasicBlock(in_planes, width, block_stride))
                in_planes = width
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet32(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 for 32x32 inputs (about 0.46 M parameters with 10 classes)."""
    return CifarResNet(5, num_classes, in_channels)
