"""The training stages as objects, one at a time: what each samples, trains and reports."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from pih2t_deploy.data.sources import build_data
from pih2t_deploy.training.engine import Trainer
from pih2t_deploy.training.recipe import load_recipe
from pih2t_deploy.training.stages import EpochTotals, Stage1, Stage2

TINY = ["stage1.epochs=2", "stage2.epochs=2", "runtime.progress=false", "stage1.warmup_epochs=1"]


def build(tmp_path, stage_class, *overrides):
    recipe = load_recipe("digits-lt", [*TINY, *overrides])
    trainer = Trainer(recipe, tmp_path, log=lambda _m: None)
    bundle = build_data(recipe.data)
    return stage_class(trainer, trainer._network(bundle), bundle), bundle


def labels_drawn(loader, epochs: int) -> Counter:
    drawn: Counter = Counter()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for _images, labels in loader:
            drawn.update(labels.tolist())
    return drawn


def test_stage2_receivers_are_class_balanced_and_its_donors_follow_the_data(tmp_path):
    """H2TF as published: receivers (whose labels train the head) drawn class-balanced, donors
    instance-balanced. Digits-LT's largest class has 50x the images of its smallest."""
    stage, bundle = build(tmp_path, Stage2)
    counts = bundle.train.class_counts
    assert max(counts) / min(counts) >= 40
    receivers, donors = labels_drawn(stage.receivers, 20), labels_drawn(stage.donors, 20)
    per_class = [receivers[c] for c in range(len(counts))]
    assert max(per_class) / min(per_class) < 1.5, per_class
    head, tail = int(np.argmax(counts)), int(np.argmin(counts))
    assert donors[head] / donors[tail] > 15, (donors[head], donors[tail])
    assert stage.uses_donors
    assert [name for name, p in stage.net.named_parameters() if p.requires_grad] == ["head.fc.weight", "head.fc.bias"]


def test_stage1_samples_instances_and_trains_everything_but_lws(tmp_path):
    stage, bundle = build(tmp_path, Stage1, "model.lws=true")
    drawn = labels_drawn(stage.receivers, 5)
    counts = bundle.train.class_counts
    shares = [drawn[c] / (5 * n) for c, n in enumerate(counts)]  # each image once per epoch, less a partial batch
    assert all(0.9 <= share <= 1.0 for share in shares), shares
    frozen = [name for name, p in stage.net.named_parameters() if not p.requires_grad]
    assert frozen == ["head.lws"] and not stage.uses_donors


def test_mixup_accuracy_weights_each_prediction_by_the_share_of_its_label(tmp_path):
    """Under mixup an image is lam of one image and 1 - lam of another: a prediction counts lam when it names
    the first image's label and 1 - lam when it names the second's (the progress shows it as 'mixup acc')."""
    stage, _ = build(tmp_path, Stage1)
    assert stage.accuracy_label == "mixup acc" and stage.settings.mixup_alpha == 0.2
    stage.model = nn.Flatten()  # logits = the mixed one-hot images: the prediction is the larger share
    images, labels = torch.eye(10).reshape(10, 1, 1, 10), torch.arange(10)
    stage.rng, stage.generator = np.random.default_rng(16), torch.Generator().manual_seed(16)
    result = stage.step(images, labels, None, epoch=0)
    lam = float(np.random.default_rng(16).beta(0.2, 0.2))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(16))
    predicted = labels if lam > 0.5 else perm
    expected = lam * int((predicted == labels).sum()) + (1 - lam) * int((predicted == perm).sum())
    assert 0.05 < lam < 0.95 and result.correct == pytest.approx(expected)
    assert result.correct < 10 - 0.5  # no longer every image counted whole


def test_epoch_totals_average_per_image():
    totals = EpochTotals()
    totals.add(loss=2.0, correct=3.5, images=4)
    totals.add(loss=1.0, correct=1.0, images=2)
    assert (totals.loss, totals.accuracy, totals.images) == (pytest.approx(10 / 6), pytest.approx(4.5 / 6), 6)
    assert (EpochTotals().loss, EpochTotals().accuracy) == (0.0, 0.0)
