"""What a prediction run reports at the end: counts, and for labelled input the accuracy per class and group.

Computed by streaming the finished output file (so a resumed run counts every row, old and new) in memory
proportional to the number of classes, not images.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pih2t_deploy.data.longtail import GroupThresholds
from pih2t_deploy.predict.rows import PredictionRow
from pih2t_deploy.runtime.classifier import ModelInfo


def summarize_rows(rows: Iterable[PredictionRow], info: ModelInfo) -> dict[str, Any]:
    """``images``, ``errors`` and, when rows carry true labels, ``top1``, ``per_class`` accuracy (classes with
    labelled images) and ``many`` / ``medium`` / ``few`` (over the images of each group's classes, by the
    artifact's training counts and thresholds; None for a group without images)."""
    images = errors = 0
    seen: dict[str, list[int]] = {}  # true label -> [images, correct]
    for row in rows:
        images += 1
        if row.error:
            errors += 1
            continue
        if row.true_label is not None:
            tally = seen.setdefault(row.true_label, [0, 0])
            tally[0] += 1
            tally[1] += int(bool(row.labels) and row.labels[0] == row.true_label)
    summary: dict[str, Any] = {"images": images, "errors": errors, "classified": images - errors}
    if seen:
        summary.update(_accuracy(seen, info))
    return summary


def _accuracy(seen: dict[str, list[int]], info: ModelInfo) -> dict[str, Any]:
    total = sum(t[0] for t in seen.values())
    out: dict[str, Any] = {
        "labelled_images": total,
        "top1": sum(t[1] for t in seen.values()) / total,
        "per_class": {label: {"images": t[0], "correct": t[1], "accuracy": t[1] / t[0]} for label, t in seen.items()},
    }
    counts = info.class_counts
    if counts and len(counts) == info.num_classes:
        thresholds = GroupThresholds.from_meta(info.meta)
        group_of = dict(zip(info.labels, thresholds.groups(counts), strict=True))
        for group in ("many", "medium", "few"):
            members = [t for label, t in seen.items() if group_of.get(label) == group]
            n = sum(t[0] for t in members)
            out[group] = sum(t[1] for t in members) / n if n else None
        out["thresholds"] = {"many": thresholds.many, "few": thresholds.few}
    return out
