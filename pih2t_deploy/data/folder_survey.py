"""What a folder of training images holds, read before any training: image sizes and colour modes, from the
headers, without decoding pixels.

The survey decides what the recipe leaves open (``data.mode``, ``data.input_size``, ``data.resize``) and
refuses, before a minute of training is spent, a preprocessing that would upscale the images far beyond
their own size.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pih2t_deploy.data.backbone_defaults import IMAGENET_CROP_PCT, BackboneDefaults
from pih2t_deploy.errors import ConfigError, DataError

SURVEYED_IMAGES = 1000  # headers read at most (evenly spread over the sorted file list)
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"})
PHOTO_INPUT_SIZE = 224  # the input size chosen for images at least this large (with resize 256, as ImageNet)


@dataclass(frozen=True)
class FolderSurvey:
    """Measured facts of a training set's images: ``shorter_side`` is the median shorter side (pixels) of the
    images read, ``modes`` how many of them had each PIL mode."""

    images_read: int
    shorter_side: int
    median_size: tuple[int, int]
    modes: dict[str, int]

    @property
    def grayscale(self) -> bool:
        """Whether every image read is grayscale (a palette image counts as colour)."""
        return all(mode in GRAYSCALE_MODES for mode in self.modes)

    def describe(self) -> str:
        """One line, e.g. ``images 28x28 (median of 331 read), grayscale``."""
        width, height = self.median_size
        colour = "grayscale" if self.grayscale else "colour"
        return f"images {width}x{height} (median of {self.images_read} read), {colour}"


def _header(path: Path) -> tuple[int, int, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size[0], image.size[1], image.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); remove or replace it") from None


def survey_images(paths: Sequence[Path]) -> FolderSurvey:
    """Read the headers of up to SURVEYED_IMAGES of ``paths`` (evenly spread over the list, which is sorted by
    class); DataError naming the first unreadable image."""
    step = max(1, len(paths) // SURVEYED_IMAGES)
    headers = [_header(path) for path in paths[::step][:SURVEYED_IMAGES]]
    return FolderSurvey(
        images_read=len(headers),
        shorter_side=statistics.median_low(min(w, h) for w, h, _ in headers),
        median_size=(statistics.median_low(w for w, _, _ in headers), statistics.median_low(h for _, h, _ in headers)),
        modes=dict(Counter(mode for _, _, mode in headers)),
    )


def fitted_sizes(
    survey: FolderSurvey,
    input_size: int | None,
    resize: int | None,
    backbone: BackboneDefaults | None = None,
) -> tuple[int, int]:
    """``(input_size, resize)``: those given, the rest chosen from the images' median shorter side S and a
    pretrained ``backbone``'s input size and crop fraction (without one, ImageNet's 224 of 256):
    photos (S at least the input size) get that input size after resizing to input size / crop fraction, never
    beyond S; smaller images keep their own size (input_size = resize = S, no upscaling)."""
    side = survey.shorter_side
    default_size, crop_pct = (
        (backbone.input_size, backbone.crop_pct) if backbone else (PHOTO_INPUT_SIZE, IMAGENET_CROP_PCT)
    )
    size = input_size or min(default_size, side)
    return size, resize or max(size, min(side, round(size / crop_pct)))


def check_upscale(survey: FolderSurvey, input_size: int, resize: int, max_upscale: float) -> None:
    """ConfigError with the overrides to pass when ``resize`` enlarges the median image more than
    ``max_upscale`` times (8x8 digits resized to 256 train for hours on blur)."""
    side = survey.shorter_side
    factor = resize / side
    if factor <= max_upscale:
        return
    enough = math.ceil(factor * 10) / 10
    raise ConfigError(
        f"data.input_size={input_size} data.resize={resize} upscale this data's images (median "
        f"{survey.median_size[0]}x{survey.median_size[1]}) {factor:.1f}x; pass data.input_size={side} "
        f"data.resize={side} (their own size, with a model.arch built for it), or data.max_upscale={enough:g} "
        f"to train on images enlarged that much (the limit is {max_upscale:g})"
    )
