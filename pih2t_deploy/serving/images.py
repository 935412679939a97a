"""Decode uploaded image bytes into the model's input batch, every bad image a named serving error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pih2t_deploy.data.images import (
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    header_pixels,
    open_image,
)
from pih2t_deploy.errors import DataError
from pih2t_deploy.serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


def request_pixels(blobs: list[tuple[str, bytes]], max_request_pixels: int) -> int:
    """The pixels the images' headers announce, summed, read before anything is decoded; more than
    ``max_request_pixels`` is PayloadTooLarge (so decoded memory per request stays bounded)."""
    total = sum(header_pixels(blob) for _, blob in blobs)
    if total > max_request_pixels:
        raise PayloadTooLarge(
            f"the {len(blobs)} images of this request hold {total:,} pixels; the limit per request is "
            f"{max_request_pixels:,} (send fewer or smaller images per request)",
        )
    return total


def decode_batch(blobs: list[tuple[str, bytes]], prepare: Callable[[list], np.ndarray], max_pixels: int) -> np.ndarray:
    """The model input (``prepare`` of the decoded images) for ``(name, bytes)`` pairs; for the first image
    that cannot be used PayloadTooLarge (too many pixels), UnsupportedMediaType (not an image format read
    here) or InvalidInput (corrupt)."""
    images = []
    for name, blob in blobs:
        try:
            images.append(open_image(blob, name=name, max_pixels=max_pixels))
        except ImageTooLargeError as exc:
            raise PayloadTooLarge(str(exc)) from None
        except UnsupportedImageError as exc:
            raise UnsupportedMediaType(str(exc)) from None
        except (CorruptImageError, DataError) as exc:
            raise InvalidInput(str(exc)) from None
    try:
        return prepare(images)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot convert the image: {exc}") from None
