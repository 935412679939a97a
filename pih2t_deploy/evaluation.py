"""Evaluation of a classifier's outputs: top-1/top-5, Many/Medium/Few, per-class accuracy, calibration error,
confusion matrix, plots.

It works on logits and labels (numpy) and knows no framework, so training, export and bench (which all score
models) import it from here, below all three.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.data.longtail import GroupThresholds, softmax, top_k


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def summarize(
    logits: np.ndarray,
    targets: np.ndarray,
    class_counts: Sequence[int],
    thresholds: GroupThresholds,
    index_groups: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Accuracy metrics as fractions in [0, 1]; group accuracy is over the test images of that group's classes.

    With ``index_groups`` ``(a, b)``, ``by_class_index`` adds the authors' split: the mean per-class accuracy of
    classes ``[0, a)``, ``[a, b)`` and ``[b, K)`` (as their code reports Many/Medium/Few for CIFAR-100).
    """
    num_classes = logits.shape[1]
    probs = softmax(logits)
    predicted = logits.argmax(axis=1)
    top5 = top_k(logits, 5)
    correct = predicted == targets
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets, predicted), 1)
    per_class = [float(correct[targets == c].mean()) if (targets == c).any() else None for c in range(num_classes)]
    groups = thresholds.groups(class_counts)
    group_acc: dict[str, float | None] = {}
    for group in ("many", "medium", "few"):
        members = np.isin(targets, [c for c, g in enumerate(groups) if g == group])
        group_acc[group] = float(correct[members].mean()) if members.any() else None
    extra = {} if index_groups is None else {"by_class_index": _by_class_index(per_class, index_groups)}
    return {
        "top1": float(correct.mean()),
        "top5": float((top5 == targets[:, None]).any(axis=1).mean()),
        **group_acc,
        "ece": expected_calibration_error(probs, targets),
        "num_images": len(targets),
        "thresholds": {"many": thresholds.many, "few": thresholds.few},
        "groups": groups,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        **extra,
    }


def _by_class_index(per_class: Sequence[float | None], bounds: Sequence[int]) -> dict[str, Any]:
    first, second = int(bounds[0]), int(bounds[1])
    ranges = {"many": (0, first), "medium": (first, second), "few": (second, len(per_class))}
    out: dict[str, Any] = {"bounds": [first, second]}
    for group, (low, high) in ranges.items():
        values = [v for v in per_class[low:high] if v is not None]
        out[group] = float(np.mean(values)) if values else None
    return out


MAX_NAMED_CLASSES = 30


def class_axis_labels(
    class_names: Sequence[str], class_counts: Sequence[int], order: Sequence[int] | np.ndarray
) -> list[str]:
    """The per-class axis's tick labels in the order shown (head to tail): each class's name and training
    count, e.g. ``"7 (500)"``; none beyond MAX_NAMED_CLASSES classes (the axis then says how many)."""
    if len(order) > MAX_NAMED_CLASSES:
        return []
    return [f"{class_names[i]} ({int(class_counts[i])})" for i in order]


def plot_summary(summary: dict[str, Any], class_names: Sequence[str], class_counts: Sequence[int], path: Path) -> Path:
    """PNG: per-class accuracy and the confusion matrix, classes sorted by training frequency (head first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = top_k(np.asarray(class_counts), len(class_counts))
    confusion = np.asarray(summary["confusion"], dtype=np.float64)[np.ix_(order, order)]
    rows = confusion.sum(axis=1, keepdims=True)
    confusion = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    accuracy = [summary["per_class"][i] or 0.0 for i in order]
    colours = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.bar(range(len(order)), accuracy, color=[colours[summary["groups"][i]] for i in order])
    ticks = class_axis_labels(class_names, class_counts, order)
    axis = "class (training images), head -> tail" if ticks else f"{len(order)} classes by training images"
    left.set(title="Per-class accuracy (head -> tail)", xlabel=axis, ylabel="accuracy", ylim=(0, 1))
    if ticks:
        left.set_xticks(range(len(order)), ticks, rotation=90)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    left.legend(handles, list(colours), loc="upper right")
    image = right.imshow(confusion, cmap="viridis", vmin=0, vmax=1)
    right.set(title="Confusion matrix (row-normalised, head -> tail)", xlabel="predicted", ylabel="true")
    fig.colorbar(image, ax=right)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
