"""Safe image decoding: bounded pixel counts, first frame of animations, EXIF orientation applied."""

from __future__ import annotations

import io
import warnings
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from pih2t_deploy.errors import DataError

MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageTooLargeError(DataError):
    """The decoded image would exceed the pixel limit (a decompression bomb or an oversized photo)."""


class UnsupportedImageError(DataError):
    """The bytes are not an image in a format PIL can decode (SVG, PDF, text, ...)."""


class CorruptImageError(DataError):
    """The bytes start like an image but are truncated, empty or damaged."""


def open_image(source: str | bytes | IO[bytes], name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (a path or the encoded bytes) into a loaded PIL image, EXIF rotation applied.

    Raises ImageTooLargeError when width*height exceeds ``max_pixels`` (checked from the header, before
    decoding) and DataError naming ``name`` for anything that is not a decodable image.
    """
    if isinstance(source, bytes) and not source:
        raise CorruptImageError(f"{name} is empty")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f"{name} is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
            return ImageOps.exif_transpose(image)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{name} exceeds the pixel limit of {max_pixels:,} pixels") from None
    except FileNotFoundError:
        raise DataError(f"{name} does not exist") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            f"{name} is not an image in a supported format (JPEG, PNG, GIF, BMP, TIFF, WebP)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(f"{name} is truncated or corrupt ({exc})") from None


def header_pixels(data: bytes) -> int:
    """width x height as the image's header states it, read without decoding the pixels; 0 when the bytes are
    not a readable image header (decoding them later says what is wrong)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0
    return width * height
