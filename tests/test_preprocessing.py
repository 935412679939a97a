"""Preprocessing settings as a checkpoint from someone else may carry them: every rule with its exact message,
the round trip through the checkpoint dict, and the resize geometry against hand-computed sizes."""

from __future__ import annotations

import pytest

from pih2t_deploy.data.preprocessing import MAX_SIZE, Preprocessing
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
