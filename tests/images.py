"""Image files in every awkward variant a service meets, built in memory."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "pih2t_deploy" / "samples"


def sample(label: int) -> bytes:
    """A bundled real Digits image (8x8 PNG)."""
    return (SAMPLES / f"digit_{label}.png").read_bytes()


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def variants() -> dict[str, bytes]:
    """Valid images in unusual forms: each must classify with 200."""
    digit = Image.open(io.BytesIO(sample(3)))
    gray = np.asarray(digit)
    rgba = Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 200)]), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    frames = [digit.convert("P"), Image.fromarray(255 - gray).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "1x1.png": encode(Image.new("L", (1, 1), 128)),
        "gray.png": sample(3),
        "rgb.jpg": encode(digit.convert("RGB").resize((64, 64)), "JPEG"),
        "16bit.png": encode(Image.fromarray((gray.astype(np.uint16) * 257), "I;16")),
        "palette.png": encode(digit.convert("P")),
        "rgba.png": encode(rgba),
        "cmyk.jpg": encode(digit.convert("CMYK").resize((32, 32)), "JPEG"),
        "exif.jpg": encode(digit.convert("RGB").resize((32, 16)), "JPEG", exif=exif),
        "animated.gif": gif.getvalue(),
        "big.png": encode(digit.resize((1024, 1024))),
    }


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'


def icon() -> bytes:
    """A Windows icon: a format PIL decodes and the service does not take."""
    return encode(Image.new("L", (16, 16)), "ICO", sizes=[(16, 16)])


def truncated_png() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    return data[: len(data) // 2]


def bomb_png() -> bytes:
    """A small file that decodes to 100 megapixels (a decompression bomb)."""
    return encode(Image.new("1", (10_000, 10_000)))
