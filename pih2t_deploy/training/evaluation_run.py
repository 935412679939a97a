"""``pih2t-eval``: evaluate a checkpoint on the test set its metadata describes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from pih2t_deploy.atomic import write_text_atomic
from pih2t_deploy.checkpoint import load_checkpoint
from pih2t_deploy.data.sources import DataConfig, build_data
from pih2t_deploy.errors import DataError
from pih2t_deploy.training.engine import resolve_device
from pih2t_deploy.training.evaluate import plot_summary, predict, summarize


def evaluate_checkpoint(
    ckpt_path: Path, output: Path, *, data_root: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Evaluate ``ckpt_path`` on its test set; write ``eval.json`` and ``eval.png`` into ``output``."""
    ckpt = load_checkpoint(ckpt_path)
    if "data" not in ckpt.meta:
        raise DataError(f"{ckpt_path} does not record its data set (not trained by pih2t-train)")
    data = DataConfig.from_dict(ckpt.meta["data"])
    if data_root is not None:
        data = dataclasses.replace(data, root=data_root)
    bundle = build_data(data)
    if bundle.test.class_names != ckpt.class_names:
        raise DataError("the test set's classes differ from the checkpoint's class names")
    target = resolve_device(device)
    logits, targets = predict(ckpt.net.to(target), DataLoader(bundle.test, batch_size=256), target)
    counts = ckpt.class_counts or bundle.train.class_counts
    summary = summarize(logits, targets, counts, data.thresholds)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "eval.json", json.dumps({"checkpoint": str(ckpt_path), **summary}, indent=2) + "\n")
    plot_summary(summary, ckpt.class_names, counts, output / "eval.png")
    return summary
