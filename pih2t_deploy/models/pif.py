"""Permutation-invariant representation fusion (PIF), as defined in docs METHOD.md.

For every sample and spatial position, with channel values x_c and their channel mean m, each channel's
pair u_c = [x_c, x_c - m] goes through one point-wise network phi (widths 2 -> 4 -> 2 -> 1, kernel-size-1
convolutions, 25 parameters) shared by all channels and positions. Permuting the channels permutes the output
the same way. Without an activation (the default) PIF is affine: x^_c = a*x_c - b*m + c.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pih2t_deploy.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


@dataclass(frozen=True)
class AffineCoefficients:
    """PIF without activation equals x^_c = a*x_c - b*m + c for these three scalars."""

    a: float
    b: float
    c: float


class PIF(nn.Module):
    """The PIF layer on a [B, C, H, W] feature map; ``activation`` (None, relu, gelu, silu, tanh) inside phi."""

    def __init__(self, activation: str | None = None) -> None:
        super().__init__()
        if activation is not None and activation not in ACTIVATIONS:
            raise ConfigError(f"unknown PIF activation {activation!r}; choose none or one of: {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.phi = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Conv1d(4, 2, 1), nn.Conv1d(2, 1, 1))

    @property
    def is_affine(self) -> bool:
        """True when phi has no activation, so the layer can be folded away."""
        return self.activation is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        if self.activation is None:
            a, b, c = self._affine_terms()
            return a * x - b * mean + c
        batch, channels, height, width = x.shape
        pairs = torch.stack((x, x - mean), dim=2).reshape(batch * channels, 2, height * width)
        act = ACTIVATIONS[self.activation]
        out = pairs
        layers = self.layers
        for index, layer in enumerate(layers):
            out = layer(out)
            if index < len(layers) - 1:
                out = act(out)
        return out.reshape(batch, channels, height, width)

    def _affine_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, b, c) as differentiable tensors: phi composed into one 1x2 map, so an affine PIF costs a few
        element-wise operations instead of three convolutions over every channel and position."""
        first, *rest = self.layers
        weight, bias = first.weight[:, :, 0], self._bias(first)
        for layer in rest:
            w = layer.weight[:, :, 0]
            bias = w @ bias + self._bias(layer)
            weight = w @ weight
        on_value, on_centered = weight[0, 0], weight[0, 1]
        return on_value + on_centered, on_centered, bias[0]

    @property
    def layers(self) -> list[nn.Conv1d]:
        """phi's three point-wise convolutions."""
        return [layer for layer in self.phi if isinstance(layer, nn.Conv1d)]

    @staticmethod
    def _bias(layer: nn.Conv1d) -> torch.Tensor:
        assert layer.bias is not None  # phi's convolutions are built with a bias
        return layer.bias

    @torch.no_grad()
    def affine_coefficients(self) -> AffineCoefficients:
        """(a, b, c) of the affine map; only defined when ``is_affine``."""
        if not self.is_affine:
            raise ValueError("PIF with an activation is not affine")
        weight = torch.eye(2, dtype=torch.float64)
        bias = torch.zeros(2, dtype=torch.float64)
        for layer in self.layers:
            w = layer.weight.detach().double()[:, :, 0]
            bias = w @ bias + self._bias(layer).detach().double()
            weight = w @ weight
        on_value, on_centered = weight[0].tolist()
        return AffineCoefficients(a=on_value + on_centered, b=on_centered, c=float(bias[0]))
