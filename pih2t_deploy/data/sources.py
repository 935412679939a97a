"""Where long-tailed training data comes from: Digits-LT, CIFAR-LT, split files and ImageFolder trees.

``build_data(config)`` returns the training set (long-tailed), the balanced test set and the preprocessing.
No source downloads anything: a missing folder gets a message saying where to put the data.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from torchvision.transforms import v2 as T

from pih2t_deploy.data.backbone_defaults import BackboneDefaults
from pih2t_deploy.data.datasets import ArrayImages, FileImages, LabelledImages, require_every_class
from pih2t_deploy.data.folder_survey import FolderSurvey, check_upscale, fitted_sizes, survey_images
from pih2t_deploy.data.images import IMAGE_SUFFIXES
from pih2t_deploy.data.longtail import GroupThresholds, longtail_counts, measured_imbalance, select_longtail
from pih2t_deploy.data.preprocessing import CIFAR_MEAN, CIFAR_STD, MODES, Preprocessing, to_mode
from pih2t_deploy.data.validation import ValidationSplit, split_per_class
from pih2t_deploy.errors import ConfigError, DataError
from pih2t_deploy.settings import FORBID_UNKNOWN_KEYS, validate_settings

SourceName = Literal["digits-lt", "cifar10-lt", "cifar100-lt", "split-file", "imagefolder"]
SUBSAMPLED_SOURCES = ("digits-lt", "cifar10-lt", "cifar100-lt")  # balanced sets made long-tailed here
DEFAULT_IMBALANCE_FACTOR = 50.0
AugmentName = Literal["none", "digits", "cifar", "imagenet"]
SOURCES: tuple[str, ...] = get_args(SourceName)
AUGMENTATIONS: tuple[str, ...] = get_args(AugmentName)


@dataclass(frozen=True)
class DataConfig:
    """One data set definition (a recipe's ``data`` section).

    ``longtail_selection`` picks which images a long-tailed CIFAR keeps of each class: ``generator`` draws them
    with numpy's default generator seeded by ``seed``; ``authors`` shuffles each class's indices with the legacy
    ``np.random.seed(seed)`` / ``np.random.shuffle`` and keeps the first ones, as the H2T and LDAM-DRW code do
    (the same images as theirs). ``index_groups`` ``[a, b]`` adds the authors' Many/Medium/Few split by class
    index (classes ``< a`` / ``a..b-1`` / ``>= b``; CIFAR-100: ``[36, 71]``) beside the split by training count.

    ``imbalance_factor`` shapes the sources made long-tailed here (SUBSAMPLED_SOURCES; 50 unless set); a folder
    or split file keeps every image it lists, so its factor is measured, and setting one is refused. For those,
    ``mode``, ``input_size`` and ``resize`` left unset are chosen from the images (folder_survey), and a resize
    beyond ``max_upscale`` times their median shorter side is refused before training.
    """

    __pydantic_config__ = FORBID_UNKNOWN_KEYS

    source: SourceName = "digits-lt"
    root: str | None = None
    imbalance_factor: float | None = None
    seed: int = 0
    train_split: str | None = None
    test_split: str | None = None
    many_threshold: int = 100
    few_threshold: int = 20
    augment: AugmentName = "none"
    input_size: int | None = None
    resize: int | None = None
    mode: Literal["RGB", "L"] | None = None
    max_upscale: float = 2.0
    longtail_selection: Literal["generator", "authors"] = "generator"
    index_groups: tuple[int, int] | None = None
    val_fraction: float = 0.0  # of each class's training images, when the data has no val folder (validation.py)
    val_split: str = "val"  # the validation folder of imagefolder data, used when it exists

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"unknown data source {self.source!r}; choose one of: {', '.join(SOURCES)}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augment {self.augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if self.source not in SUBSAMPLED_SOURCES and self.imbalance_factor is not None:
            raise ConfigError(
                f"data.imbalance_factor={self.imbalance_factor:g} subsamples the built-in data sets "
                f"({', '.join(SUBSAMPLED_SOURCES)}) only; {self.source} data keeps every image and its imbalance "
                "is measured from it: drop the setting (start from --recipe imagefolder, not digits-lt)"
            )
        if self.source in SUBSAMPLED_SOURCES and self.imbalance_factor is None:
            object.__setattr__(self, "imbalance_factor", DEFAULT_IMBALANCE_FACTOR)
        if self.imbalance_factor is not None and self.imbalance_factor < 1:
            raise ConfigError(f"imbalance_factor must be >= 1, got {self.imbalance_factor}")
        if not self.max_upscale > 0:
            raise ConfigError(f"data.max_upscale must be > 0, got {self.max_upscale}")
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"unknown data.mode {self.mode!r}; choose RGB (colour) or L (grayscale)")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.index_groups is not None and not 0 < self.index_groups[0] < self.index_groups[1]:
            raise ConfigError(f"data.index_groups must be two class indices 0 < a < b, got {list(self.index_groups)}")

    @property
    def thresholds(self) -> GroupThresholds:
        """Many/Medium/Few thresholds of this data set."""
        return GroupThresholds(self.many_threshold, self.few_threshold)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """From a dict (a checkpoint's record of its data set), validated by type; one ConfigError line naming
        the key otherwise. Records written before the factor was measured hold the recipe's 50 for folders:
        it is dropped."""
        if data.get("source") not in SUBSAMPLED_SOURCES:
            data = {key: value for key, value in data.items() if key != "imbalance_factor"}
        return validate_settings(cls, data, "data.")

    @property
    def subsampled_factor(self) -> float:
        """The imbalance factor a built-in source is subsampled to."""
        return self.imbalance_factor or DEFAULT_IMBALANCE_FACTOR


@dataclass
class DataBundle:
    """Training and test sets with the preprocessing that both use; ``config`` is the data definition with
    what the images decided filled in, ``survey`` what was measured of a folder or split file's images."""

    train: LabelledImages
    test: LabelledImages
    preprocessing: Preprocessing
    train_transform: T.Compose
    config: DataConfig
    survey: FolderSurvey | None = None
    val: LabelledImages | None = None
    validation: ValidationSplit | None = None

    @property
    def imbalance_factor(self) -> float:
        """Largest training class over the smallest, as measured."""
        return measured_imbalance(self.train.class_counts)


def _augmentation(name: str, prep: Preprocessing) -> list:
    """The augmentation ``name`` on top of the inference geometry: every choice ends in an input_size square
    of the image at the scale evaluation and serving see it (``imagenet`` samples that scale, as its
    RandomResizedCrop is meant to); ``digits`` and ``cifar`` first resize and crop exactly as inference does."""
    size, interp = prep.input_size, T.InterpolationMode(prep.interpolation)
    as_inference = [T.Resize(prep.resize, interpolation=interp, antialias=True), T.CenterCrop(size)]
    if name == "digits":
        return [*as_inference, T.RandomAffine(degrees=10, translate=(0.125, 0.125), interpolation=interp)]
    if name == "cifar":
        return [*as_inference, T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
    if name == "imagenet":
        return [
            T.RandomResizedCrop(size, interpolation=interp, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4),
        ]
    return as_inference


def train_transform(augment: str, prep: Preprocessing) -> T.Compose:
    """Training transform: colour mode, augmentation, then the same scaling and normalisation as inference."""
    return T.Compose(
        [
            T.Lambda(lambda image: to_mode(image, prep.mode)),
            *_augmentation(augment, prep),
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(prep.mean, prep.std),
        ]
    )


def _digits(config: DataConfig) -> tuple[ArrayImages, ArrayImages, Preprocessing]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    rng = np.random.default_rng(config.seed)
    test_per_class = 50
    test_idx = np.sort(
        np.concatenate([rng.choice(np.flatnonzero(labels == c), test_per_class, replace=False) for c in range(10)])
    )
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    n_max = min(int(np.bincount(labels[rest]).min()), 120)
    counts = longtail_counts(n_max, 10, config.subsampled_factor)
    train_idx = rest[select_longtail(labels[rest], counts, config.seed)]
    names = [str(i) for i in range(10)]
    full = ArrayImages(pixels, labels, names)
    prep = Preprocessing(8, 8, "L", (0.5,), (0.5,))
    return full.subset(train_idx), full.subset(test_idx), prep


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batch files: dicts, lists, strings, bytes and numpy arrays only; nothing executable."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refused to load {module}.{name} from a CIFAR file: only arrays are allowed")


def _read_cifar_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"missing CIFAR file {path}")
    try:
        with path.open("rb") as handle:
            raw = _ArraysOnly(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR python batch file ({exc})") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar(config: DataConfig, num_classes: int) -> tuple[ArrayImages, ArrayImages, Preprocessing]:
    folder_name = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    root = Path(config.root or "data")
    folder = root / folder_name if (root / folder_name).is_dir() else root
    if not folder.is_dir():
        raise DataError(
            f"CIFAR data not found at {root}: download the python version of CIFAR-{num_classes} and unpack it "
            f"so that {root / folder_name} exists, then pass data.root={root}"
        )
    if num_classes == 10:
        train_parts = [_read_cifar_file(folder / f"data_batch_{i}") for i in range(1, 6)]
        test_part, label_key = _read_cifar_file(folder / "test_batch"), "labels"
        names = [n.decode() for n in _read_cifar_file(folder / "batches.meta")["label_names"]]
    else:
        train_parts, label_key = [_read_cifar_file(folder / "train")], "fine_labels"
        test_part = _read_cifar_file(folder / "test")
        names = [n.decode() for n in _read_cifar_file(folder / "meta")["fine_label_names"]]

    def arrays(parts: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        data = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
        labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels

    train_pixels, train_labels = arrays(train_parts)
    test_pixels, test_labels = arrays([test_part])
    n_max = int(np.bincount(train_labels, minlength=num_classes).max())
    counts = longtail_counts(n_max, num_classes, config.subsampled_factor)
    try:
        keep = select_longtail(train_labels, counts, config.seed, config.longtail_selection)
    except ValueError as exc:
        raise DataError(f"{folder}: {exc}") from None
    train = ArrayImages(train_pixels, train_labels, names).subset(keep)
    return train, ArrayImages(test_pixels, test_labels, names), Preprocessing(32, 32, "RGB", CIFAR_MEAN, CIFAR_STD)


def _read_split(root: Path, split: str) -> tuple[list[Path], list[int]]:
    path = Path(split) if Path(split).is_absolute() else root / split
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    paths, labels = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        relative = Path(parts[0])
        if relative.is_absolute() or ".." in relative.parts:
            raise DataError(f"{path}:{number}: image paths must stay inside the root folder")
        paths.append(root / relative)
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"split file {path} lists no images")
    return paths, labels


def _split_files(config: DataConfig) -> tuple[FileImages, FileImages]:
    if not config.root or not config.train_split or not config.test_split:
        raise ConfigError("split-file data needs data.root, data.train_split and data.test_split")
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    train_paths, train_labels = _read_split(root, config.train_split)
    test_paths, test_labels = _read_split(root, config.test_split)
    num_classes = max(train_labels) + 1
    names = [str(i) for i in range(num_classes)]
    bad = [label for label in train_labels + test_labels if not 0 <= label < num_classes]
    if bad:
        raise DataError(
            f"label {bad[0]} is out of range: the training split has {num_classes} classes (0..{num_classes - 1})"
        )
    return FileImages(train_paths, train_labels, names), FileImages(test_paths, test_labels, names)


def _folder_tree(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"class folder {folder / name} has no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [index] * len(files)
    return paths, labels, classes


def _image_folders(config: DataConfig) -> tuple[FileImages, FileImages]:
    if not config.root:
        raise ConfigError("imagefolder data needs data.root (with train/ and test/ class folders)")
    root = Path(config.root)
    train_paths, train_labels, names = _folder_tree(root / (config.train_split or "train"))
    test_paths, test_labels, test_names = _folder_tree(root / (config.test_split or "test"))
    if test_names != names:
        raise DataError(f"{root}: test classes differ from training classes")
    return FileImages(train_paths, train_labels, names), FileImages(test_paths, test_labels, names)


def _fitted_to_images(
    config: DataConfig, train: FileImages, backbone: BackboneDefaults | None
) -> tuple[Preprocessing, DataConfig, FolderSurvey]:
    """Folder and split-file data: the survey of the training images decides what ``config`` leaves unset
    (grayscale images get mode L; sizes by fitted_sizes, with a pretrained ``backbone``'s input size and crop
    fraction), then refuses a resize that upscales too far. ImageNet statistics for RGB, 0.5/0.5 for
    grayscale."""
    survey = survey_images(train.paths)
    mode = config.mode or ("L" if survey.grayscale else "RGB")
    size, resize = fitted_sizes(survey, config.input_size, config.resize, backbone)
    check_upscale(survey, size, resize, config.max_upscale)
    fitted = replace(config, mode=mode, input_size=size, resize=resize)
    if mode == "L":
        return Preprocessing(size, resize, "L", (0.5,), (0.5,)), fitted, survey
    return Preprocessing(size, resize, "RGB"), fitted, survey


def build_data(config: DataConfig, backbone: BackboneDefaults | None = None) -> DataBundle:
    """Training set (long-tailed), balanced test set and preprocessing for ``config``; clear DataErrors.
    A pretrained ``backbone`` (``models.timm_archs.pretrained_defaults``) gives the mean, std and
    interpolation, and for folder and split-file data the input size and crop fraction left unset."""
    train: LabelledImages
    test: LabelledImages
    survey = None
    if config.source == "digits-lt":
        train, test, prep = _digits(config)
    elif config.source in ("cifar10-lt", "cifar100-lt"):
        train, test, prep = _cifar(config, 10 if config.source == "cifar10-lt" else 100)
    else:
        files, test = _split_files(config) if config.source == "split-file" else _image_folders(config)
        prep, config, survey = _fitted_to_images(config, files, backbone)
        train = files
    if backbone is not None:
        prep = replace(prep, **backbone.normalization(prep.mode))
    train, val, validation = _validation(config, train)
    require_every_class(train, "training set")
    test.transform = prep.transform()
    if val is not None:
        val.transform = prep.transform()
    transform = train_transform(config.augment, prep)
    train.transform = transform
    return DataBundle(train, test, prep, transform, config, survey, val, validation)


def _validation(
    config: DataConfig, train: LabelledImages
) -> tuple[LabelledImages, LabelledImages | None, ValidationSplit | None]:
    """(training set, validation set, description): ROOT/<val_split> of an image folder when it exists, else
    ``val_fraction`` of each class (nothing when it is 0)."""
    folder = Path(config.root or "") / config.val_split
    if config.source == "imagefolder" and config.root and folder.is_dir():
        paths, labels, names = _folder_tree(folder)
        if names != train.class_names:
            raise DataError(f"{folder}: validation classes differ from training classes")
        return train, FileImages(paths, labels, names), ValidationSplit(str(folder), len(paths), [])
    if config.val_fraction == 0:
        return train, None, None
    if not isinstance(train, ArrayImages | FileImages):
        raise ConfigError(f"data.val_fraction cannot split {type(train).__name__} data")
    return split_per_class(train, config.val_fraction, config.seed)
