"""Long-tailed data: the exponential profile, CIFAR folders, split files, ImageFolder trees, bad input."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pih2t_deploy.data.longtail import GroupThresholds, longtail_counts
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.errors import ConfigError, DataError
from tests.python2_pickle import dump_python2


def test_longtail_profile_matches_the_published_cifar100_lt_size():
    assert sum(longtail_counts(500, 100, 100)) == 10847
    counts = longtail_counts(5000, 10, 100)
    assert counts[0] == 5000 and counts[-1] == 50 and counts == sorted(counts, reverse=True)


def _write_cifar100(root, per_class=500, test_per_class=2, random_pixels=False):
    """The CIFAR-100 python files as Python 2 wrote them (train, test, meta), each image marked with its label
    (its first byte); the other bytes are zero or, with ``random_pixels``, seeded noise."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(100), per_class)
    if random_pixels:  # a random colour per image and channel (varied network outputs), plus noise
        rng = np.random.default_rng(3)
        colours = np.repeat(rng.integers(0, 200, (len(labels), 3)), 1024, axis=1)
        data = (colours + rng.integers(0, 56, (len(labels), 3072))).astype(np.uint8)
    else:
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
    with pytest.raises(ConfigError, match=r"^setting data.source='mnist' is not allowed: Input should be 'digits-lt'"):
        DataConfig.from_dict({"source": "mnist"})
    with pytest.raises(ConfigError, match=r"^data.index_groups must be two class indices 0 < a < b, got \[71, 36\]$"):
        DataConfig.from_dict({"index_groups": [71, 36]})
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


def test_the_authors_selection_keeps_the_images_their_cifar_code_keeps(tmp_path):
    """Their IMBALANCECIFAR: np.random.seed(0), then per class in order np.random.shuffle(np.where(labels ==
    c)[0]) and the first n kept. Written here against numpy's global generator, as their code calls it."""
    _images, labels, _names = _write_cifar10(tmp_path, per_class=20)
    config = DataConfig(source="cifar10-lt", root=str(tmp_path), imbalance_factor=10, longtail_selection="authors")
    bundle = build_data(config)
    order = np.random.default_rng(0).permutation(len(labels))  # the training batches' order, as written
    train_labels = labels[np.concatenate(np.array_split(order, 5))]
    np.random.seed(0)
    expected = []
    for cls, count in enumerate(longtail_counts(20, 10, 10)):
        idx = np.where(train_labels == cls)[0]
        np.random.shuffle(idx)
        expected += idx[:count].tolist()
    image_ids = np.concatenate(np.array_split(order, 5))[expected]  # blue channel = the written image's index
    assert sorted(bundle.train.pixels[:, 0, 0, 2].tolist()) == sorted(image_ids.tolist())
    ours = build_data(DataConfig(source="cifar10-lt", root=str(tmp_path), imbalance_factor=10))
    assert sorted(ours.train.pixels[:, 0, 0, 2].tolist()) != sorted(image_ids.tolist()), "the two rules differ"


@pytest.mark.integration  # runs the command in a new process
def test_eval_of_an_authors_checkpoint_with_a_recipe_uses_their_test_preprocessing(tmp_path):
    """pih2t-eval --ckpt (a file saved by the authors' code) --recipe cifar100-lt-if100 --data ROOT scores it on
    the CIFAR-100 test set exactly as their code does: ToTensor + Normalize with their constants, then their
    network (an independent forward pass). The confusion matrix (every prediction) and the recorded best_acc1
    are compared; the authors' index split is reported beside ours."""
    import torch
    from torchvision import transforms

    from tests.authors_files import authors_cifar_checkpoint, independent_resnet32
    from tests.helpers import run_cli

    _write_cifar100(tmp_path / "data", per_class=100, test_per_class=3, random_pixels=True)
    ckpt = tmp_path / "model_best.pth.tar"
    state, weight, bias = authors_cifar_checkpoint(ckpt, num_classes=100)
    done = run_cli(
        "eval", "--ckpt", str(ckpt), "--recipe", "cifar100-lt-if100", "--data", str(tmp_path / "data"),
        "--output", str(tmp_path / "ev"), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())

    theirs = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))]
    )
    bundle = build_data(DataConfig(source="cifar100-lt", root=str(tmp_path / "data"), imbalance_factor=100))
    batch = torch.stack([theirs(bundle.test.image(i)) for i in range(len(bundle.test))])
    with torch.no_grad():
        predicted = independent_resnet32(state, weight, bias, batch).argmax(1).numpy()
    targets = np.asarray(bundle.test.targets)
    confusion = np.zeros((100, 100), dtype=np.int64)
    np.add.at(confusion, (targets, predicted), 1)
    assert len(set(predicted.tolist())) > 3, "the check needs a network whose predictions vary"
    assert report["confusion"] == confusion.tolist()
    assert report["top1"] == pytest.approx(float((predicted == targets).mean()))
    assert report["imported_from"]["best_acc1"] == pytest.approx(48.61, abs=1e-4)
    assert report["by_class_index"]["bounds"] == [36, 71]
    per_class = (confusion.diagonal() / confusion.sum(axis=1)).tolist()
    assert report["by_class_index"]["few"] == pytest.approx(float(np.mean(per_class[71:])))
    assert "best_acc1 48.61%" in done.stdout


@pytest.mark.integration  # runs the command in a new process
def test_eval_of_a_file_without_data_record_asks_for_a_recipe(tmp_path):
    from tests.authors_files import authors_cifar_checkpoint
    from tests.helpers import run_cli

    authors_cifar_checkpoint(tmp_path / "current.pth.tar", num_classes=10)
    done = run_cli("eval", "--ckpt", str(tmp_path / "current.pth.tar"))
    assert done.returncode == 2 and "pass --recipe NAME" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("augment", ["none", "digits", "cifar", "imagenet"])
@pytest.mark.parametrize("size", [(28, 28), (50, 20), (8, 8)])
def test_every_augment_gives_training_tensors_of_the_inference_shape_and_scale(augment, size):
    """Images of another size than the network's: every augment choice yields the tensor shape evaluation and
    serving give, from the image at the same scale (the un-augmented pixels agree with inference where the
    augmentation leaves them in place)."""
    from pih2t_deploy.data.preprocessing import Preprocessing
    from pih2t_deploy.data.sources import train_transform

    prep = Preprocessing(input_size=16, resize=18, mode="L", mean=(0.5,), std=(0.5,))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, size[::-1], dtype=np.uint8), "L")
    torch.manual_seed(0)
    tensor = train_transform(augment, prep)(image)
    assert tuple(tensor.shape) == prep.input_shape == (1, 16, 16)
    assert float(tensor.min()) >= -1.0 - 1e-6 and float(tensor.max()) <= 1.0 + 1e-6  # the same normalisation
    if augment == "none":
        np.testing.assert_allclose(tensor.numpy(), prep.to_numpy([image])[0], atol=1e-6)


@pytest.mark.parametrize("augment", ["none", "digits", "cifar"])
def test_digits_and_cifar_augment_the_image_at_the_scale_inference_sees(augment):
    """A 60x20 image, black left half, white right half. Inference resizes it to 54x18 and keeps the centre
    16x16, which shows both halves; so must every training view (a crop of the raw 60-pixel-wide image at its
    own scale would mostly show one colour)."""
    from pih2t_deploy.data.preprocessing import Preprocessing
    from pih2t_deploy.data.sources import train_transform

    prep = Preprocessing(input_size=16, resize=18, mode="L", mean=(0.5,), std=(0.5,))
    pixels = np.zeros((20, 60), dtype=np.uint8)
    pixels[:, 30:] = 255
    image = Image.fromarray(pixels, "L")
    transform = train_transform(augment, prep)
    torch.manual_seed(0)
    for _ in range(20):
        view = transform(image)[0]
        assert float(view.max()) > 0.9 and float(view.min()) < -0.9  # white and black both in view
