"""Safe image decoding: bounded pixel counts, first frame of animations, EXIF orientation applied."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from pih2t_deploy.errors import DataError

MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageTooLargeError(DataError):
    """The decoded image would exceed the pixel limit (a decompression bomb or an oversized photo)."""


def open_image(
    source: str | bytes | io.BufferedIOBase, name: str = "image", max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Decode ``source`` (a path or the encoded bytes) into a loaded PIL image, EXIF rotation applied.

    Raises ImageTooLargeError when width*height exceeds ``max_pixels`` (checked from the header, before
    decoding) and DataError naming ``name`` for anything that is not a decodable image.
    """
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
        raise DataError(f"{name} is not an image in a format this service can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name} is truncated or corrupt ({exc})") from None
