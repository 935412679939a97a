"""Preprocessing settings as a checkpoint from someone else may carry them: every rule with its exact message,
the round trip through the checkpoint dict, and the resize geometry against hand-computed sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.data.preprocessing import MAX_SIZE, Preprocessing, to_mode
from pih2t_deploy.errors import ConfigError

GOOD = {"input_size": 8, "resize": 10, "mode": "L", "mean": (0.5,), "std": (0.25,)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "CMYK"}, "unknown colour mode 'CMYK'; choose one of: L, RGB"),
        ({"interpolation": "lanczos9"}, "unknown interpolation 'lanczos9'"),
        ({"mean": (0.5, 0.5)}, "mean and std need 1 values for mode L"),
        ({"std": (0.5, 0.5)}, "mean and std need 1 values for mode L"),
        ({"input_size": 0, "resize": 0}, "need whole numbers 1 <= input_size <= resize <= 4096, got (0, 0)"),
        ({"input_size": 11}, "need whole numbers 1 <= input_size <= resize <= 4096, got (11, 10)"),
        ({"resize": MAX_SIZE + 1}, "need whole numbers 1 <= input_size <= resize <= 4096, got (8, 4097)"),
        ({"input_size": True, "resize": 1}, "need whole numbers 1 <= input_size <= resize <= 4096, got (True, 1)"),
        ({"input_size": 8.0}, "need whole numbers 1 <= input_size <= resize <= 4096, got (8.0, 10)"),
        ({"mean": (float("nan"),)}, "mean and std must be finite numbers, got [nan] and [0.25]"),
        ({"std": (True,)}, "mean and std must be finite numbers, got [0.5] and [True]"),
        ({"mean": ("0.5",)}, "mean and std must be finite numbers, got ['0.5'] and [0.25]"),
        ({"std": (0.0,)}, "std values must be positive"),
        ({"std": (-1.0,)}, "std values must be positive"),
    ],
)
def test_each_rule_refuses_with_its_message(change, message):
    with pytest.raises(ConfigError) as refused:
        Preprocessing(**{**GOOD, **change})
    assert str(refused.value) == message


def test_the_smallest_and_largest_sizes_are_allowed_and_values_become_floats():
    assert Preprocessing(**{**GOOD, "input_size": 1, "resize": 1}).input_shape == (1, 1, 1)
    big = Preprocessing(**{**GOOD, "input_size": MAX_SIZE, "resize": MAX_SIZE})
    assert big.input_shape == (1, MAX_SIZE, MAX_SIZE)
    prep = Preprocessing(input_size=4, resize=4, mode="RGB", mean=[0, 1, 2], std=[1, 2, 3])
    assert prep.mean == (0.0, 1.0, 2.0) and prep.std == (1.0, 2.0, 3.0)
    assert all(type(v) is float for v in (*prep.mean, *prep.std))


def test_the_checkpoint_dict_round_trips_and_unknown_keys_are_refused():
    prep = Preprocessing(**GOOD, interpolation="nearest")
    data = prep.to_dict()
    assert data == {
        "input_size": 8,
        "resize": 10,
        "mode": "L",
        "mean": [0.5],
        "std": [0.25],
        "interpolation": "nearest",
    }
    assert Preprocessing.from_dict(data) == prep
    assert Preprocessing.from_dict({"input_size": 4, "resize": 4}).mean == (0.485, 0.456, 0.406)
    with pytest.raises(ConfigError, match=r"preprocessing\.crop"):
        Preprocessing.from_dict({**data, "crop": 3})


@pytest.mark.parametrize(
    ("size", "expected"),
    [((20, 10), (20, 10)), ((10, 20), (10, 20)), ((10, 10), (10, 10)), ((30, 20), (15, 10)), ((7, 9), (10, 12))],
)
def test_the_shorter_side_becomes_resize_and_the_longer_is_truncated(size, expected):
    assert Preprocessing(**GOOD).resized_size(*size) == expected


def _sixteen(mode: str, values: list[int]) -> Image.Image:
    order = ">" if mode == "I;16B" else "<"
    return Image.frombytes(mode, (len(values), 1), np.array(values, dtype=f"{order}u2").tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_16_bit_images_are_scaled_not_clipped(mode):
    image = _sixteen(mode, [0, 255, 32768, 51529, 65535])
    assert image.mode == mode
    # v x 255/65535 = v/257: 32768 -> 127.50 -> 128, 51529 -> 200.502 -> 201 (with 65536: 200.499 -> 200)
    assert np.asarray(to_mode(image, "L")).tolist() == [[0, 1, 128, 201, 255]]
    dark = _sixteen(mode, [0, 255])  # a dark 16-bit image is still 16-bit: 255 is 1/257 of white
    assert np.asarray(to_mode(dark, "L")).tolist() == [[0, 1]]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 100, 255], [0, 100, 255]),  # 32-bit integers that fit in 8 bits stay as they are
        ([0, 256, 65535], [0, 1, 255]),  # above 255: the 16-bit range is scaled down
        ([0, 256], [0, 1]),
        ([-5, 100, 255], [0, 100, 255]),  # below 0: black
        ([0, 70000], [0, 255]),  # beyond 16 bits: white
    ],
)
def test_32_bit_and_float_images_use_the_8_bit_range_unless_values_exceed_it(values, expected):
    as_int = Image.fromarray(np.array([values], dtype=np.int32), mode="I")
    as_float = Image.fromarray(np.array([values], dtype=np.float32), mode="F")
    for image in (as_int, as_float):
        assert np.asarray(to_mode(image, "L")).tolist() == [expected], image.mode


def test_transparency_is_composited_over_white_in_every_mode():
    la = Image.fromarray(np.array([[[0, 0], [0, 255], [100, 128]]], dtype=np.uint8), mode="LA")
    assert np.asarray(to_mode(la, "L")).tolist() == [[255, 0, 177]]  # 100 a + 255 (1 - a), a = 128/255
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 255]]], dtype=np.uint8), mode="RGBA")
    assert np.asarray(to_mode(rgba, "RGB")).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # palette entry 0 (black) is transparent
    assert np.asarray(to_mode(palette, "RGB")).tolist() == [[[255, 255, 255], [200, 10, 10]]]
    opaque = palette.copy()
    opaque.info.pop("transparency")
    assert np.asarray(to_mode(opaque, "RGB")).tolist() == [[[0, 0, 0], [200, 10, 10]]]
    pa = palette.convert("PA")
    assert pa.mode == "PA" and np.asarray(to_mode(pa, "RGB")).tolist() == [[[255, 255, 255], [200, 10, 10]]]


@pytest.mark.parametrize(
    ("arch", "channels", "expected"),
    [
        ("resnet50", 3, (224, 256, "RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),  # ImageNet
        ("resnet32", 3, (32, 32, "RGB", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201))),  # the authors' CIFAR
        ("resnet32", 1, (32, 32, "L", (0.5,), (0.5,))),
        ("digits_net", 1, (8, 8, "L", (0.5,), (0.5,))),
    ],
)
def test_default_preprocessing_per_architecture(arch, channels, expected):
    from pih2t_deploy.data.preprocessing import default_preprocessing
    from pih2t_deploy.models import get_arch

    prep = default_preprocessing(get_arch(arch).default_input_size, channels)
    assert (prep.input_size, prep.resize, prep.mode, prep.mean, prep.std) == expected
    assert prep.interpolation == "bilinear"


def test_the_torch_transform_gives_the_numpy_pixels_and_three_channels_by_default():
    import torch

    from pih2t_deploy.data.preprocessing import default_preprocessing

    prep = Preprocessing(**GOOD)
    image = Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10), mode="L")
    tensor = prep.transform()(image)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, 8, 8)
    np.testing.assert_array_equal(tensor.numpy(), prep.to_numpy([image])[0])
    np.testing.assert_array_equal(prep.to_tensor([image, image]).numpy(), prep.to_numpy([image, image]))
    assert default_preprocessing(32).mode == "RGB"


@pytest.mark.parametrize("size", [(3, 900), (900, 3), (40, 500)])
def test_a_strip_is_resized_only_where_the_crop_keeps_it_with_the_same_pixels(size):
    """An image far longer than wide: only the cropped square is resized (PIL's box), and the pixels equal
    those of resizing the whole strip then cropping, up to one grey level of rounding."""
    from pih2t_deploy.data.preprocessing import INTERPOLATIONS, MAX_RESIZED_AREA

    prep = Preprocessing(input_size=8, resize=10, mode="L", mean=(0.5,), std=(0.5,))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, size[::-1], dtype=np.uint8), mode="L")
    width, height = prep.resized_size(*image.size)
    assert width * height > MAX_RESIZED_AREA * prep.resize**2  # the bounded path is taken
    whole = image.resize((width, height), resample=INTERPOLATIONS["bilinear"])
    left, top = round((width - 8) / 2.0), round((height - 8) / 2.0)
    expected = np.asarray(whole.crop((left, top, left + 8, top + 8)), dtype=np.int16)
    got = prep.pixels(image)[..., 0].astype(np.int16)
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.5


def test_a_one_pixel_high_strip_of_two_million_costs_little_memory(tmp_path):
    """1 x 2,000,000 pixels (a 4 kB PNG, within the pixel budget): resizing the whole strip to ImageNet's 256
    would need a 512-million-pixel-wide image; decoding and preprocessing it grows the process by less than
    64 MB (measured in a fresh process, peak resident memory)."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (2_000_000, 1), (200, 30, 90)).save(path)
    assert path.stat().st_size < 20_000
    code = f"""
import resource
from pih2t_deploy.data.images import open_image
from pih2t_deploy.data.preprocessing import Preprocessing
prep = Preprocessing(input_size=224, resize=256)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
batch = prep.to_numpy([open_image({str(path)!r})])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(batch.shape, round((after - before) / 1024))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, grown_mb = done.stdout.rsplit(" ", 1)
    assert shape == "(1, 3, 224, 224)" and int(grown_mb) < 64, done.stdout
