"""What a pretrained backbone expects of its inputs (timm's pretrained configuration), applied to a recipe's
data: the normalisation and interpolation always, and for image folders and split files, whose sizes are
fitted to their images, the input size and the centre-crop fraction the recipe leaves unset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGENET_CROP_PCT = 224 / 256  # resize the shorter side to 256, keep the centre 224: ImageNet's evaluation


@dataclass(frozen=True)
class BackboneDefaults:
    """A pretrained backbone's preprocessing: RGB mean and std, interpolation, input size, crop fraction
    (input size / resized shorter side)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    input_size: int
    crop_pct: float

    def normalization(self, mode: str) -> dict[str, Any]:
        """Mean, std and interpolation for images of colour ``mode`` (grayscale: each the channels' average)."""
        mean, std = self.mean, self.std
        if mode == "L":
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        return {"mean": mean, "std": std, "interpolation": self.interpolation}

    def describe(self, mode: str, sizes: bool) -> str:
        """One line for the training log, for images of colour ``mode``; ``sizes``: whether the data's input size
        and crop may come from here (folder and split-file data)."""
        norm = self.normalization(mode)
        line = f"mean {list(norm['mean'])}, std {list(norm['std'])}, {self.interpolation} resizing"
        if sizes:
            line += f", input size {self.input_size} and centre crop {self.crop_pct:g} unless the recipe sets them"
        return line
