"""The validation set that model selection and post-hoc calibration use, so the test set is scored once.

ROOT/val (class folders like train/ and test/) when the data has one; else ``data.val_fraction`` of each
class's training images (at least one from every class that has two, so the tail is validated too), drawn
with the data seed. Every class keeps at least one training image: a class with a single image gives none to
validation, and the split says which classes that happened to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pih2t_deploy.data.datasets import ArrayImages, FileImages, LabelledImages

SHOWN = 5


@dataclass(frozen=True)
class ValidationSplit:
    """Where the validation images came from, in words for the training log."""

    source: str
    images: int
    classes_without: list[str]

    def describe(self) -> str:
        """One line: how many validation images, from where, and the classes that have none."""
        line = f"validation: {self.images} images ({self.source})"
        if self.classes_without:
            names = ", ".join(self.classes_without[:SHOWN])
            more = f" and {len(self.classes_without) - SHOWN} more" if len(self.classes_without) > SHOWN else ""
            line += (
                f"; {len(self.classes_without)} class(es) too small to split keep their only image for training "
                f"and have no validation image: {names}{more}"
            )
        return line


def split_per_class(
    train: ArrayImages | FileImages, fraction: float, seed: int
) -> tuple[LabelledImages, LabelledImages, ValidationSplit]:
    """(training part, validation part, description): ``round(fraction * n)`` of each class's ``n`` images go to
    validation, at least one and at most ``n - 1`` of them."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(train.targets)
    keep: list[int] = []
    held: list[int] = []
    without: list[str] = []
    for label, name in enumerate(train.class_names):
        members = np.flatnonzero(targets == label)
        rng.shuffle(members)
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        if count == 0:
            without.append(name)
        held.extend(members[:count])
        keep.extend(members[count:])
    split = ValidationSplit(f"{fraction:.0%} of each class's training images", len(held), without)
    return train.subset(np.sort(keep)), train.subset(np.sort(held)), split
