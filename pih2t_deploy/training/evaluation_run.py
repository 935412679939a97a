"""``pih2t-eval``: evaluate a checkpoint on the test set its metadata describes, or the one a recipe names."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from pih2t_deploy.atomic import write_text_atomic
from pih2t_deploy.checkpoint import Checkpoint, load_checkpoint
from pih2t_deploy.data.sources import DataBundle, DataConfig, build_data
from pih2t_deploy.errors import DataError
from pih2t_deploy.evaluation import plot_summary, summarize
from pih2t_deploy.training.engine import resolve_device
from pih2t_deploy.training.predict import predict

logger = logging.getLogger(__name__)


def evaluate_checkpoint(
    ckpt_path: Path,
    output: Path,
    *,
    data_root: str | None = None,
    device: str = "auto",
    recipe: str | None = None,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Evaluate ``ckpt_path`` on a test set; write ``eval.json`` and ``eval.png`` into ``output``.

    Without ``recipe`` the test set and its preprocessing are the ones the checkpoint records (trained by
    pih2t-train). With ``recipe`` they are the recipe's data set (its test preprocessing: for CIFAR the
    authors' normalisation), which is how a file saved by the authors' H2T code is scored: its class names and
    training counts come from that data set. ``data_root`` replaces the data folder either way. A checkpoint
    whose classes differ from the test set's is a DataError.
    """
    ckpt: Checkpoint | None = None
    if recipe is None:
        ckpt = load_checkpoint(ckpt_path, log=log)
        if "data" not in ckpt.meta:
            raise DataError(
                f"{ckpt_path} does not record its data set (not trained by pih2t-train): pass --recipe NAME "
                "to evaluate it on that recipe's test set, e.g. --recipe cifar100-lt-if100 --data ROOT"
            )
        data = DataConfig.from_dict(ckpt.meta["data"])
    else:
        from pih2t_deploy.training.recipe import load_recipe

        data = load_recipe(recipe).data
    if data_root is not None:
        data = dataclasses.replace(data, root=data_root)
    bundle = build_data(data)
    if ckpt is None:
        ckpt = load_checkpoint(
            ckpt_path, class_counts=bundle.train.class_counts, class_names=bundle.train.class_names, log=log
        )
    return _score(ckpt, ckpt_path, bundle, data, output, device, recipe)


def _score(
    ckpt: Checkpoint,
    ckpt_path: Path,
    bundle: DataBundle,
    data: DataConfig,
    output: Path,
    device: str,
    recipe: str | None,
) -> dict[str, Any]:
    if bundle.test.class_names != ckpt.class_names:
        raise DataError("the test set's classes differ from the checkpoint's class names")
    target = resolve_device(device)
    logits, targets = predict(ckpt.net.to(target), DataLoader(bundle.test, batch_size=256), target)
    counts = ckpt.class_counts or bundle.train.class_counts
    summary = summarize(logits, targets, counts, data.thresholds, data.index_groups)
    record = {"checkpoint": str(ckpt_path), "recipe": recipe, "imported_from": ckpt.meta.get("imported_from")}
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "eval.json", json.dumps({**record, **summary}, indent=2) + "\n")
    plot_summary(summary, ckpt.class_names, counts, output / "eval.png")
    return {**record, **summary}
