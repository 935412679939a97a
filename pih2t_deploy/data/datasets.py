"""Labelled image data sets with class names and counts: in-memory arrays or files on disk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from pih2t_deploy.data.images import open_image
from pih2t_deploy.errors import DataError


class LabelledImages(Dataset):
    """Base: ``targets``, ``class_names``, ``class_counts``; items are ``(transform(image), label)``."""

    def __init__(
        self, targets: Sequence[int] | np.ndarray, class_names: Sequence[str], transform: Callable | None
    ) -> None:
        self.targets = [int(t) for t in targets]
        self.class_names = list(class_names)
        self.transform = transform
        bad = [t for t in self.targets if not 0 <= t < len(self.class_names)]
        if bad:
            raise DataError(f"label {bad[0]} is out of range for {len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def class_counts(self) -> list[int]:
        """Images per class, index order."""
        return np.bincount(self.targets, minlength=self.num_classes).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        """The decoded image at ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.image(index)
        return (self.transform(image) if self.transform else image), self.targets[index]


class ArrayImages(LabelledImages):
    """Images held in memory as a uint8 array [N, H, W] (grayscale) or [N, H, W, 3] (RGB)."""

    def __init__(
        self,
        pixels: np.ndarray,
        targets: Sequence[int] | np.ndarray,
        class_names: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        super().__init__(targets, class_names, transform)
        if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or len(pixels) != len(self.targets):
            raise DataError("image arrays must be uint8 [N, H, W] or [N, H, W, 3] with one label per image")
        self.pixels = pixels

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], mode="L" if self.pixels.ndim == 3 else "RGB")

    def subset(self, indices: np.ndarray) -> ArrayImages:
        """A new data set with the images at ``indices``."""
        targets = [self.targets[i] for i in indices]
        return ArrayImages(self.pixels[indices], targets, self.class_names, self.transform)


class FileImages(LabelledImages):
    """Images read from files on each access; a file that fails to decode raises DataError naming it."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], class_names: Sequence[str], transform=None):
        super().__init__(targets, class_names, transform)
        self.paths = [Path(p) for p in paths]

    def image(self, index: int) -> Image.Image:
        return open_image(str(self.paths[index]), name=str(self.paths[index]))

    def subset(self, indices: np.ndarray) -> FileImages:
        """A new data set with the images at ``indices``."""
        return FileImages(
            [self.paths[i] for i in indices], [self.targets[i] for i in indices], self.class_names, self.transform
        )


def require_every_class(data: LabelledImages, what: str) -> None:
    """DataError naming the first class without images in ``data``."""
    empty = [data.class_names[c] for c, n in enumerate(data.class_counts) if n == 0]
    if empty:
        raise DataError(f"{what}: class {empty[0]!r} has no images ({len(empty)} empty class(es) in all)")
