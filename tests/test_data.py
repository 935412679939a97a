"""Long-tailed data: the exponential profile, CIFAR folders, split files, ImageFolder trees, bad input."""

import pickle

import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.data.longtail import GroupThresholds, longtail_counts
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.errors import ConfigError, DataError


def test_longtail_profile_matches_the_published_cifar100_lt_size():
    assert sum(longtail_counts(500, 100, 100)) == 10847
    counts = longtail_counts(5000, 10, 100)
    assert counts[0] == 5000 and counts[-1] == 50 and counts == sorted(counts, reverse=True)


def _write_cifar100(root, per_class=500, test_per_class=2):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(100), per_class)
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels  # mark each image with its label to check the selection
    for name, rows, fine in (
        ("train", data, labels),
        ("test", data[: 100 * test_per_class], np.repeat(np.arange(100), test_per_class)),
    ):
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": rows, b"fine_labels": fine.tolist()}, handle)
    with (folder / "meta").open("wb") as handle:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)]}, handle)


def test_cifar100_lt_if100_from_a_synthetic_folder_has_10847_images(tmp_path):
    _write_cifar100(tmp_path)
    bundle = build_data(DataConfig(source="cifar100-lt", root=str(tmp_path), imbalance_factor=100))
    assert len(bundle.train) == 10847
    assert bundle.train.class_counts == longtail_counts(500, 100, 100)
    assert bundle.train.class_names[3] == "class3"
    assert (bundle.train.pixels[:, 0, 0, 0] == np.asarray(bundle.train.targets)).all()
    again = build_data(DataConfig(source="cifar100-lt", root=str(tmp_path), imbalance_factor=100))
    assert bundle.train.targets == again.train.targets, "the selection is seeded"


def test_cifar_refuses_pickled_code(tmp_path):
    _write_cifar100(tmp_path)
    import os

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    with (tmp_path / "cifar-100-python" / "train").open("wb") as handle:
        pickle.dump({b"data": Exploit()}, handle)
    with pytest.raises(DataError, match="refused to load"):
        build_data(DataConfig(source="cifar100-lt", root=str(tmp_path)))


def test_missing_cifar_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        build_data(DataConfig(source="cifar10-lt", root=str(tmp_path / "nothing")))


def test_digits_lt_is_long_tailed_with_a_balanced_test_set():
    bundle = build_data(DataConfig(source="digits-lt", imbalance_factor=50))
    counts = bundle.train.class_counts
    assert counts[0] == 120 and counts[-1] == 2 and counts == sorted(counts, reverse=True)
    assert bundle.test.class_counts == [50] * 10
    image, label = bundle.test[0]
    assert tuple(image.shape) == (1, 8, 8) and 0 <= label < 10


def _image(path, colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)


def test_split_files_and_errors_naming_the_problem(tmp_path):
    for i in range(4):
        _image(tmp_path / "img" / f"{i}.png")
    (tmp_path / "train.txt").write_text("img/0.png 0\nimg/1.png 1\nimg/2.png 1\n")
    (tmp_path / "test.txt").write_text("img/3.png 0\n")
    config = DataConfig(
        source="split-file", root=str(tmp_path), train_split="train.txt", test_split="test.txt", input_size=8
    )
    bundle = build_data(config)
    assert bundle.train.class_counts == [1, 2] and tuple(bundle.train[0][0].shape) == (3, 8, 8)
    (tmp_path / "test.txt").write_text("img/3.png 7\n")
    with pytest.raises(DataError, match="label 7 is out of range"):
        build_data(config)
    (tmp_path / "test.txt").write_text("../../etc/passwd 0\n")
    with pytest.raises(DataError, match="inside the root"):
        build_data(config)
    (tmp_path / "test.txt").write_text("img/3.png\n")
    with pytest.raises(DataError, match=r"test\.txt:1"):
        build_data(config)
    (tmp_path / "test.txt").write_text("img/bad.png 0\n")
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=r"bad\.png"):
        build_data(config).test[0]


def test_imagefolder_tree_and_empty_class(tmp_path):
    for split in ("train", "test"):
        _image(tmp_path / split / "cat" / "a.jpg")
        _image(tmp_path / split / "dog" / "b.png")
    bundle = build_data(DataConfig(source="imagefolder", root=str(tmp_path), input_size=8))
    assert bundle.train.class_names == ["cat", "dog"]
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(DataError, match="emu has no images"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path), input_size=8))
    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path / "none")))


def test_unknown_source_and_groups():
    with pytest.raises(ConfigError, match="unknown data source"):
        DataConfig(source="mnist")
    assert GroupThresholds(100, 20).groups([500, 101, 100, 20, 19]) == ["many", "many", "medium", "medium", "few"]
