"""Safe image decoding: bounded pixel counts, first frame of animations, EXIF orientation applied."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from pih2t_deploy.errors import DataError

MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# the only decoders PIL may try: the formats people send, and the plain netpbm ones (PBM/PGM/PPM); PIL's other
# plugins (EPS hands the file to Ghostscript, and the rarely used ones are the least fuzzed) are never reached
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
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
    return load_image(peek_image(source, name, max_pixels), name)


def peek_image(source: str | bytes | IO[bytes], name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``source`` opened with only its header read: its size is known and at most ``max_pixels``, no pixel is
    decoded yet (``load_image`` does that). Raises as ``open_image`` does for what the header shows."""
    if isinstance(source, bytes) and not source:
        raise CorruptImageError(f"{name} is empty")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with _decoding(name, max_pixels):
        image = Image.open(stream, formats=FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"{name} is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
        return image


def load_image(image: Image.Image, name: str = "image") -> Image.Image:
    """The pixels of a ``peek_image`` result decoded: its first frame, EXIF rotation applied; DataError naming
    ``name`` when they cannot be decoded."""
    with _decoding(name, MAX_PIXELS):
        if getattr(image, "is_animated", False):
            image.seek(0)
        image.load()
        return ImageOps.exif_transpose(image)


@contextlib.contextmanager
def _decoding(name: str, max_pixels: int) -> Iterator[None]:
    """PIL's failures while opening or decoding ``name`` as this module's named errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{name} exceeds the pixel limit of {max_pixels:,} pixels") from None
    except FileNotFoundError:
        raise DataError(f"{name} does not exist") from None
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            f"{name} is not an image in a supported format (JPEG, PNG, GIF, BMP, TIFF, WebP, PBM/PGM/PPM)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(f"{name} is truncated or corrupt ({exc})") from None
