"""Which encoded formats the decoder accepts: the ones people send, and nothing else PIL happens to know."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.data.images import UnsupportedImageError, open_image
from tests import images

DIGIT = Image.open(images.SAMPLES / "digit_5.png").convert("L")


def plain_pgm(image: Image.Image) -> bytes:
    pixels = np.asarray(image)
    rows = "\n".join(" ".join(map(str, row)) for row in pixels)
    return f"P2\n{image.width} {image.height}\n255\n{rows}\n".encode()


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_lossless_formats_decode_to_the_same_pixels(fmt):
    options = {"lossless": True} if fmt == "WEBP" else {}
    decoded = open_image(images.encode(DIGIT, fmt, **options)).convert("L")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(DIGIT))


def test_jpeg_and_plain_text_pgm_decode():
    jpeg = open_image(images.encode(DIGIT.resize((64, 64)), "JPEG", quality=95)).convert("L")
    assert jpeg.size == (64, 64)
    np.testing.assert_allclose(np.asarray(jpeg, np.float32), np.asarray(DIGIT.resize((64, 64)), np.float32), atol=24)
    np.testing.assert_array_equal(np.asarray(open_image(plain_pgm(DIGIT))), np.asarray(DIGIT))


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PCX", "SGI", "IM", "DDS"])
def test_formats_pil_knows_but_the_service_does_not_take_are_refused_before_decoding(fmt):
    image = DIGIT.convert("RGB") if fmt == "DDS" else DIGIT
    blob = images.encode(image, fmt, **({"sizes": [DIGIT.size]} if fmt == "ICO" else {}))
    assert Image.open(io.BytesIO(blob)).format == fmt  # PIL itself would open it
    with pytest.raises(UnsupportedImageError, match="not an image in a supported format"):
        open_image(blob, name="upload")
