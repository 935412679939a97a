"""Decode uploaded image bytes into the model's input batch, mapping every bad image to an HTTP status."""

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


class BadImageError(Exception):
    """An image the service cannot use: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def request_pixels(blobs: list[tuple[str, bytes]], max_request_pixels: int) -> int:
    """The pixels the images' headers announce, summed, read before anything is decoded; more than
    ``max_request_pixels`` is a 413 (so decoded memory per request stays bounded)."""
    total = sum(header_pixels(blob) for _, blob in blobs)
    if total > max_request_pixels:
        raise BadImageError(
            413,
            f"the {len(blobs)} images of this request hold {total:,} pixels; the limit per request is "
            f"{max_request_pixels:,} (send fewer or smaller images per request)",
        )
    return total


def decode_batch(blobs: list[tuple[str, bytes]], prepare: Callable[[list], np.ndarray], max_pixels: int) -> np.ndarray:
    """The model input (``prepare`` of the decoded images) for ``(name, bytes)`` pairs; BadImageError for the
    first image that cannot be used."""
    images = []
    for name, blob in blobs:
        try:
            images.append(open_image(blob, name=name, max_pixels=max_pixels))
        except ImageTooLargeError as exc:
            raise BadImageError(413, str(exc)) from None
        except UnsupportedImageError as exc:
            raise BadImageError(415, str(exc)) from None
        except (CorruptImageError, DataError) as exc:
            raise BadImageError(400, str(exc)) from None
    try:
        return prepare(images)
    except (OSError, ValueError) as exc:
        raise BadImageError(400, f"cannot convert the image: {exc}") from None
