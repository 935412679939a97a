"""Decode uploaded image bytes into the model's input batch, every bad image a named serving error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from pih2t_deploy.data.images import (
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    load_image,
    peek_image,
)
from pih2t_deploy.errors import DataError
from pih2t_deploy.serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

Peeked = list[tuple[str, Image.Image]]  # (name, image with its header read and its pixels not yet decoded)


def peek_batch(blobs: list[tuple[str, bytes]], max_pixels: int, max_request_pixels: int) -> tuple[Peeked, int]:
    """Each image's header read, nothing decoded, and the pixels they announce summed: more than
    ``max_request_pixels`` in all is PayloadTooLarge (so decoded memory per request stays bounded), as is one
    image over ``max_pixels``; a header that is not an image's is UnsupportedMediaType or InvalidInput."""
    with _serving_errors():
        peeked = [(name, peek_image(blob, name=name, max_pixels=max_pixels)) for name, blob in blobs]
    total = sum(image.width * image.height for _, image in peeked)
    if total > max_request_pixels:
        raise PayloadTooLarge(
            f"the {len(blobs)} images of this request hold {total:,} pixels; the limit per request is "
            f"{max_request_pixels:,} (send fewer or smaller images per request)",
        )
    return peeked, total


def decode_batch(peeked: Peeked, prepare: Callable[[list], np.ndarray]) -> np.ndarray:
    """The model input (``prepare`` of the decoded images) for ``peek_batch``'s images; InvalidInput for the
    first one whose pixels cannot be decoded or converted."""
    with _serving_errors():
        images = [load_image(image, name=name) for name, image in peeked]
    try:
        return prepare(images)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot convert the image: {exc}") from None


@contextlib.contextmanager
def _serving_errors() -> Iterator[None]:
    """An image's named errors as the serving errors a client is answered with."""
    try:
        yield
    except ImageTooLargeError as exc:
        raise PayloadTooLarge(str(exc)) from None
    except UnsupportedImageError as exc:
        raise UnsupportedMediaType(str(exc)) from None
    except (CorruptImageError, DataError) as exc:
        raise InvalidInput(str(exc)) from None
