"""The exponential long-tail profile and the Many/Medium/Few groups (docs METHOD.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def measured_imbalance(class_counts: Sequence[int]) -> float:
    """The imbalance factor a data set has: its largest class count over its smallest (an empty class counts
    as one image)."""
    return max(class_counts) / max(1, min(class_counts))


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Class i (0-based) keeps floor(n_max * IF^(-i/(C-1))) images."""
    if imbalance_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return [n_max]
    return [math.floor(n_max * imbalance_factor ** (-i / (num_classes - 1)) + 1e-9) for i in range(num_classes)]


def select_longtail(
    labels: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int, method: str = "generator"
) -> np.ndarray:
    """Indices keeping ``counts[c]`` images of each class c, in index order.

    ``generator``: chosen at random by numpy's default generator seeded with ``seed``. ``authors``: each class's
    indices shuffled in class order by the legacy global generator after ``np.random.seed(seed)``, the first
    ``counts[c]`` kept, which is how the H2T / LDAM-DRW CIFAR code selects them (so the same images).
    """
    array = np.asarray(labels)
    generator, legacy = np.random.default_rng(seed), np.random.RandomState(seed)
    keep = []
    for cls, count in enumerate(counts):
        members = np.flatnonzero(array == cls)
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


# The long-tail arithmetic every part of the package uses (training losses, the fold, export checks, serving,
# the demo, offline prediction), in float64 numpy so the torch-free serving path shares it.


def log_prior(class_counts: Sequence[float] | np.ndarray) -> np.ndarray:
    """log(n_k / sum n) in float64. Every class needs at least one training image: a count of 0 (or below)
    is a ValueError naming the class, because its prior, and any logit adjustment by it, would be infinite."""
    counts = np.asarray(list(class_counts), dtype=np.float64)
    empty = np.flatnonzero(counts <= 0)
    if len(empty):
        raise ValueError(
            f"class {int(empty[0])} has {counts[empty[0]]:g} training images: the class prior needs a positive "
            "count for every class"
        )
    return np.log(counts / counts.sum())


def logit_adjusted(scores: np.ndarray, class_counts: Sequence[float] | np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment z - tau * log prior (Menon et al.): larger tau favours the tail."""
    return np.asarray(scores, dtype=np.float64) - tau * log_prior(class_counts)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, stable for any finite scores."""
    shifted = np.asarray(scores, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores along the last axis, best first; equal scores keep the lower index first.
    ``k`` larger than the number of classes gives them all."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")[..., : max(0, k)]
