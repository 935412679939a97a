"""Real images for calibration and evaluation: the checkpoint's own data set ('recipe') or a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pih2t_deploy.checkpoint import Checkpoint
from pih2t_deploy.data.images import IMAGE_SUFFIXES, open_image
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.errors import DataError


@dataclass
class ImageSet:
    """Decoded images with labels (None for an unlabelled folder)."""

    images: list[Image.Image]
    labels: np.ndarray | None
    source: str

    def split(self, first: int) -> tuple[ImageSet, ImageSet]:
        """The first ``first`` images and the rest, as two sets that share no image."""
        labels = (None, None) if self.labels is None else (self.labels[:first], self.labels[first:])
        rest = f"{self.source}, {len(self.images) - first} images held out from calibration"
        return ImageSet(self.images[:first], labels[0], self.source), ImageSet(self.images[first:], labels[1], rest)


def _from_recipe(ckpt: Checkpoint, split: str, limit: int | None, seed: int) -> ImageSet:
    if "data" not in ckpt.meta:
        raise DataError("this checkpoint records no data set; pass an image folder instead of 'recipe'")
    bundle = build_data(DataConfig.from_dict(ckpt.meta["data"]))
    data = bundle.train if split == "train" else bundle.test
    indices = np.arange(len(data))
    if limit is not None and limit < len(data):
        indices = np.sort(np.random.default_rng(seed).choice(len(data), limit, replace=False))
    return ImageSet(
        [data.image(int(i)) for i in indices], np.asarray([data.targets[i] for i in indices]), f"recipe:{split}"
    )


def _from_folder(folder: Path, class_names: list[str], limit: int | None, seed: int) -> ImageSet:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None and limit < len(files):
        picked = np.sort(np.random.default_rng(seed).choice(len(files), limit, replace=False))
        files = [files[i] for i in picked]
    index = {name: i for i, name in enumerate(class_names)}
    labelled = all(p.parent != folder and p.relative_to(folder).parts[0] in index for p in files)
    labels = np.asarray([index[p.relative_to(folder).parts[0]] for p in files]) if labelled and files else None
    return ImageSet([open_image(str(p), name=str(p)) for p in files], labels, str(folder))


def load_images(
    spec: str,
    ckpt: Checkpoint,
    *,
    split: str,
    limit: int | None = None,
    minimum: int = 1,
    seed: int = 0,
    why: str = "",
) -> ImageSet:
    """Images from ``spec`` ('recipe' or a folder; a labelled folder has one sub-folder per class name).

    Raises DataError when fewer than ``minimum`` images are found (``why`` says what they are needed for).
    """
    found = (
        _from_recipe(ckpt, split, limit, seed)
        if spec == "recipe"
        else _from_folder(Path(spec), ckpt.class_names, limit, seed)
    )
    if len(found.images) < minimum:
        raise DataError(f"{spec} has {len(found.images)} usable images; at least {minimum} are needed{why}")
    return found
