"""The one definition of inference preprocessing, stored with every checkpoint and artifact.

Training evaluation, the exporters, the REST service, the demo and the Triton preprocess model all build
their inputs with ``Preprocessing`` (``to_numpy``, ``to_pixels`` or ``transform()``), so they cannot drift
apart. It needs only PIL and numpy (no torch), so the serving install stays torch-free; the steps are the
ones torchvision's ``Resize(int)``, ``CenterCrop``, ``ToDtype(scale=True)`` and ``Normalize`` take on PIL
images, and a test checks the two agree bit for bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from pih2t_deploy.errors import ConfigError
from pih2t_deploy.settings import reject_unknown

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
MODES = {"L": 1, "RGB": 3}
MAX_SIZE = 4096  # the largest input_size / resize a checkpoint may ask for (pixels per side)
# beyond this many times resize^2 pixels, only the part of the resized image that the crop keeps is computed
MAX_RESIZED_AREA = 4


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
        sizes = (self.input_size, self.resize)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in sizes) or not (
            1 <= self.input_size <= self.resize <= MAX_SIZE
        ):
            raise ConfigError(f"need whole numbers 1 <= input_size <= resize <= {MAX_SIZE}, got {sizes}")
        values = (*self.mean, *self.std)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ConfigError(f"mean and std must be finite numbers, got {list(self.mean)} and {list(self.std)}")
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

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing the shorter side to ``resize`` (the longer side truncated, as
        torchvision computes it)."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One image converted to the colour mode, resized, centre-cropped: uint8 [H, W, C].

        An image much longer than wide (or the reverse) would be resized to a huge strip of which the crop
        keeps a small square: beyond MAX_RESIZED_AREA x resize^2 pixels only the region the crop keeps is
        resized (PIL's ``box``): the same pixels within one grey level (PIL's fixed-point weights round
        differently), and memory bounded whatever the aspect ratio."""
        image = to_mode(image, self.mode)
        width, height = self.resized_size(image.width, image.height)
        top = round((height - self.input_size) / 2.0)
        left = round((width - self.input_size) / 2.0)
        crop = (left, top, left + self.input_size, top + self.input_size)
        resample = INTERPOLATIONS[self.interpolation]
        if width * height > MAX_RESIZED_AREA * self.resize**2:
            sx, sy = image.width / width, image.height / height
            box = (left * sx, top * sy, crop[2] * sx, crop[3] * sy)
            image = image.resize((self.input_size, self.input_size), resample=resample, box=box)
        else:
            if (width, height) != image.size:
                image = image.resize((width, height), resample=resample)
            image = image.crop(crop)
        return np.asarray(image, dtype=np.uint8).reshape(self.input_size, self.input_size, self.channels)

    @functools.cached_property
    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as float32 [C, 1, 1], broadcast over planes."""
        shape = (len(self.mean), 1, 1)
        return np.asarray(self.mean, np.float32).reshape(shape), np.asarray(self.std, np.float32).reshape(shape)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels [..., H, W, C] -> contiguous float32 [..., C, H, W] scaled to [0, 1] and normalised.

        The same operations in the same order as torchvision (x * 1/255, then - mean, then / std, in float32),
        so the same bits; done in place on channel planes, where each step is one vectorised pass over
        contiguous rows rather than a loop over the three values of each pixel (about 10x faster)."""
        mean, std = self._scale
        planes = np.moveaxis(pixels, -1, -3)
        out = np.empty(planes.shape, np.float32)
        out[...] = planes
        out *= np.float32(1.0 / 255.0)
        out -= mean
        out /= std
        return out

    def to_pixels(self, images: list[Image.Image]) -> np.ndarray:
        """Resized, cropped uint8 pixels [N, H, W, C]: the input of a graph with embedded preprocessing."""
        return np.ascontiguousarray(np.stack([self.pixels(image) for image in images]))

    def to_numpy(self, images: list[Image.Image]) -> np.ndarray:
        """Preprocess decoded PIL images into one contiguous float32 batch [N, C, H, W]."""
        return self.normalise(self.to_pixels(images))

    def to_tensor(self, images: list[Image.Image]) -> Any:
        """As ``to_numpy``, as a torch tensor (imports torch: training and export only)."""
        import torch

        return torch.from_numpy(self.to_numpy(images))

    def transform(self) -> TensorTransform:
        """A picklable callable: PIL image (any mode) -> normalised float tensor [C, H, W] (for data loaders)."""
        return TensorTransform(self)


@dataclass(frozen=True)
class TensorTransform:
    """``Preprocessing.to_tensor`` for one image, as a data-set transform."""

    prep: Preprocessing

    def __call__(self, image: Image.Image) -> Any:
        return self.prep.to_tensor([image])[0]


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in colour mode ``mode`` (L or RGB): 16-bit and float images are scaled to 8 bits (not
    clipped), transparency is composited over white, CMYK/palette/grayscale go through PIL's conversions."""
    if image.mode == mode:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        np.multiply(values, 255.0 / top, out=values)  # in place: 8 bytes per pixel, not three arrays of them
        np.clip(values, 0, 255, out=values)
        image = Image.fromarray(np.rint(values, out=values).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def default_preprocessing(input_size: int, in_channels: int = 3) -> Preprocessing:
    """The usual preprocessing for a network made for ``input_size`` pixels (its architecture's default):
    ImageNet's 224 from 256 for 224 and up, else the size itself with CIFAR's statistics (RGB) or 0.5/0.5 (L)."""
    mode = "L" if in_channels == 1 else "RGB"
    if input_size >= 224:
        return Preprocessing(input_size=224, resize=256, mode="RGB")
    if in_channels == 1:
        return Preprocessing(input_size, input_size, mode, (0.5,), (0.5,))
    return Preprocessing(input_size, input_size, mode, CIFAR_MEAN, CIFAR_STD)
