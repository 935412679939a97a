"""The exponential long-tail profile and the Many/Medium/Few groups (docs METHOD.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Class i (0-based) keeps floor(n_max * IF^(-i/(C-1))) images."""
    if imbalance_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return [n_max]
    return [math.floor(n_max * imbalance_factor ** (-i / (num_classes - 1)) + 1e-9) for i in range(num_classes)]


def select_longtail(labels: Sequence[int], counts: Sequence[int], seed: int, method: str = "generator") -> np.ndarray:
    """Indices keeping ``counts[c]`` images of each class c, in index order.

    ``generator``: chosen at random by numpy's default generator seeded with ``seed``. ``authors``: each class's
    indices shuffled in class order by the legacy global generator after ``np.random.seed(seed)``, the first
    ``counts[c]`` kept, which is how the H2T / LDAM-DRW CIFAR code selects them (so the same images).
    """
    labels = np.asarray(labels)
    generator, legacy = np.random.default_rng(seed), np.random.RandomState(seed)
    keep = []
    for cls, count in enumerate(counts):
        members = np.flatnonzero(labels == cls)
        if len(members) < count:
            raise ValueError(f"class {cls} has {len(members)} images, the profile asks for {count}")
        if method == "authors":
            legacy.shuffle(members)
            keep.append(members[:count])
        else:
            keep.append(generator.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class GroupThresholds:
    """Many: more than ``many`` training images; Few: fewer than ``few``; Medium: the rest."""

    many: int = 100
    few: int = 20

    def group(self, count: int) -> str:
        """'many', 'medium' or 'few' for a class with ``count`` training images."""
        if count > self.many:
            return "many"
        if count < self.few:
            return "few"
        return "medium"

    def groups(self, counts: Sequence[int]) -> list[str]:
        """The group of every class."""
        return [self.group(int(c)) for c in counts]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> GroupThresholds:
        """The thresholds a checkpoint's (or artifact's) metadata records for its data set; 100/20 if none."""
        data = meta.get("data") or {}
        return cls(data.get("many_threshold", cls.many), data.get("few_threshold", cls.few))
