"""Long-tailed data: the exponential profile, CIFAR folders, split files, ImageFolder trees, bad input."""

import pickle

import numpy as np
import pytest
from PIL import Image

from pih2t_deploy.data.longtail import GroupThresholds, longtail_counts
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.errors import ConfigError, DataError
from tests.python2_pickle import dump_python2


def test_longtail_profile_matches_the_published_cifar100_lt_size():
    assert sum(longtail_counts(500, 100, 100)) == 10847
    counts = longtail_counts(5000, 10, 100)
    assert counts[0] == 5000 and counts[-1] == 50 and counts == sorted(counts, reverse=True)


def _write_cifar100(root, per_class=500, test_per_class=2):
    """The CIFAR-100 python files as Python 2 wrote them (train, test, meta), each image marked with its label."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(100), per_class)
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels  # mark each image with its label to check the selection
    for name, rows, fine in (
        ("train", data, labels),
        ("test", data[: 100 * test_per_class], np.repeat(np.arange(100), test_per_class)),
    ):
        dump_python2(
            {
                "filenames": [f"img_{i}.png" for i in range(len(rows))],
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": rows,
            },
            folder / name,
        )
    dump_python2(
        {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]},
        folder / "meta",
    )


def _cifar10_image(index: int) -> np.ndarray:
    """A distinct 32x32 RGB picture for image ``index``: red rises along rows, green along columns, blue is
    the index."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows * 8, cols * 8, np.full((32, 32), index % 256)], axis=-1).astype(np.uint8)


def _write_cifar10(root, per_class=20):
    """The CIFAR-10 python files as Python 2 wrote them: data_batch_1..5 and test_batch with the key 'labels'
    and rows of 3072 bytes in planar order (1024 red, then green, then blue), batches.meta with label_names."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels = np.repeat(np.arange(10), per_class)
    images = np.stack([_cifar10_image(i) for i in range(len(labels))])
    planar = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
    order = np.random.default_rng(0).permutation(len(labels))
    for batch, part in enumerate(np.array_split(order, 5), start=1):
        dump_python2(
            {"batch_label": f"training batch {batch} of 5", "labels": labels[part].tolist(), "data": planar[part]},
            folder / f"data_batch_{batch}",
        )
    dump_python2(
        {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(), "data": planar}, folder / "test_batch"
    )
    dump_python2({"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}, folder / "batches.meta")
    return images, labels, names


def test_cifar10_python2_files_decode_to_the_right_pixels_and_labels(tmp_path):
    images, labels, names = _write_cifar10(tmp_path)
    bundle = build_data(DataConfig(source="cifar10-lt", root=str(tmp_path), imbalance_factor=10))
    assert bundle.test.class_names == names and bundle.test.targets == labels.tolist()
    for index in (0, 37, 199):
        np.testing.assert_array_equal(np.asarray(bundle.test.image(index)), images[index])
    assert bundle.train.class_counts == longtail_counts(20, 10, 10)
    for position in range(len(bundle.train)):  # every kept training image is the one written with its label
        blue = int(bundle.train.pixels[position, 0, 0, 2])
        assert bundle.train.targets[position] == labels[blue]
        np.testing.assert_array_equal(bundle.train.pixels[position], images[blue])


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


def test_longtail_profile_and_selection_edge_cases():
    from pih2t_deploy.data.longtail import select_longtail

    assert longtail_counts(100, 2, 10) == [100, 10]
    assert longtail_counts(50, 3, 1) == [50, 50, 50], "imbalance factor 1 is a balanced set"
    assert longtail_counts(7, 1, 10) == [7]
    with pytest.raises(ValueError, match=r"^imbalance factor must be >= 1, got 0.5$"):
        longtail_counts(100, 3, 0.5)
    labels = np.repeat(np.arange(3), 20)
    chosen = select_longtail(labels, [20, 9, 3], seed=5)
    assert len(set(chosen.tolist())) == len(chosen) == 32, "without replacement"
    assert np.bincount(labels[chosen]).tolist() == [20, 9, 3] and (np.diff(chosen) > 0).all()
    assert select_longtail(labels, [20, 9, 3], seed=5).tolist() == chosen.tolist()
    assert select_longtail(labels, [20, 9, 3], seed=6).tolist() != chosen.tolist()
    with pytest.raises(ValueError, match=r"^class 1 has 20 images, the profile asks for 21$"):
        select_longtail(labels, [20, 21, 3], seed=0)
    empty = select_longtail(np.array([], dtype=np.int64), [], seed=0)
    assert empty.shape == (0,) and empty.dtype == np.int64
