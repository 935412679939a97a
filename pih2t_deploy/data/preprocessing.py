"""The one definition of inference preprocessing, stored with every checkpoint and artifact.

Training evaluation, the exporters, the REST service, the demo and the Triton preprocess model all build
their input tensors with ``Preprocessing.to_tensor`` (or ``transform()``), so they cannot drift apart.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.settings import reject_unknown

INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}
MODES = {"L": 1, "RGB": 3}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``input_size``, scale to [0, 1], normalise."""

    input_size: int
    resize: int
    mode: str = "RGB"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown colour mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")
        if len(self.mean) != MODES[self.mode] or len(self.std) != MODES[self.mode]:
            raise ConfigError(f"mean and std need {MODES[self.mode]} values for mode {self.mode}")
        if self.input_size < 1 or self.resize < self.input_size:
            raise ConfigError("need 1 <= input_size <= resize")
        if any(s <= 0 for s in self.std):
            raise ConfigError("std values must be positive")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def channels(self) -> int:
        """Number of input channels (1 for L, 3 for RGB)."""
        return MODES[self.mode]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        return (self.channels, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON- and weights_only-safe dict (lists, not tuples)."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Rebuild from ``to_dict`` output; unknown keys are an error."""
        reject_unknown(cls, data, "preprocessing.")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def _pixel_steps(self) -> list:
        return [
            T.Lambda(self._convert),
            T.Resize(self.resize, interpolation=INTERPOLATIONS[self.interpolation], antialias=True),
            T.CenterCrop(self.input_size),
            T.PILToTensor(),
        ]

    @functools.cached_property
    def _pixel_transform(self) -> T.Compose:
        return T.Compose(self._pixel_steps())

    @functools.cached_property
    def _float_transform(self) -> T.Compose:
        return T.Compose([*self._pixel_steps(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])

    def transform(self) -> T.Compose:
        """A torchvision transform: PIL image (any mode) -> normalised float tensor [C, H, W] (built once)."""
        return self._float_transform

    def to_pixels(self, images: list[Image.Image]) -> np.ndarray:
        """Resized, cropped uint8 pixels [N, H, W, C]: the input of a graph with embedded preprocessing."""
        steps = self._pixel_transform
        return np.ascontiguousarray(torch.stack([steps(image) for image in images]).permute(0, 2, 3, 1).numpy())

    def _convert(self, image: Image.Image) -> Image.Image:
        return to_mode(image, self.mode)

    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess a list of decoded PIL images into one float32 batch [N, C, H, W]."""
        transform = self._float_transform
        return torch.stack([transform(image) for image in images])

    def to_numpy(self, images: list[Image.Image]) -> np.ndarray:
        """As ``to_tensor``, as a contiguous float32 numpy array."""
        return np.ascontiguousarray(self.to_tensor(images).numpy())


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in colour mode ``mode`` (L or RGB): 16-bit and float images are scaled to 8 bits (not
    clipped), transparency is composited over white, CMYK/palette/grayscale go through PIL's conversions."""
    if image.mode == mode:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def default_preprocessing(arch: str, in_channels: int = 3) -> Preprocessing:
    """The usual preprocessing for ``arch`` (Digits 8x8 L, CIFAR 32x32, ImageNet 224 from 256)."""
    from pih2t_deploy.models import get_arch

    spec = get_arch(arch)
    mode = "L" if in_channels == 1 else "RGB"
    if spec.default_input_size >= 224:
        return Preprocessing(input_size=224, resize=256, mode="RGB")
    if in_channels == 1:
        return Preprocessing(spec.default_input_size, spec.default_input_size, mode, (0.5,), (0.5,))
    return Preprocessing(spec.default_input_size, spec.default_input_size, mode, CIFAR_MEAN, CIFAR_STD)
