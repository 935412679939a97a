"""A small, fast convolutional network for the bundled 8x8 Digits-LT images (grayscale)."""

from __future__ import annotations

import torch
from torch import nn

from pih2t_deploy.models.registry import FeatureBackbone


class ConvBNReLU(nn.Module):
    """3x3 convolution, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class DigitsNet(FeatureBackbone):
    """8x8 input -> [B, 64, 4, 4] feature map -> global average pooling -> ``fc``."""

    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.num_features = 64
        self.features = nn.Sequential(
            ConvBNReLU(in_channels, 32),
            ConvBNReLU(32, 32),
            ConvBNReLU(32, 64, stride=2),
            ConvBNReLU(64, 64),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def digits_net(num_classes: int, in_channels: int = 1) -> DigitsNet:
    """The Digits-LT backbone (about 0.1 M parameters)."""
    return DigitsNet(num_classes, in_channels)
