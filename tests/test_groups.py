"""Many / Medium / Few: membership and accuracies on a hand-made prediction table, and the thresholds a
checkpoint records being the ones eval, export, bench and the demo use (never the 100/20 defaults)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pih2t_deploy.data.longtail import GroupThresholds
from pih2t_deploy.evaluation import summarize
from tests.helpers import run_cli

# 7 classes; with thresholds 100/20: 150 and 101 are Many, 100, 50 and 20 Medium, 19 and 5 Few.
COUNTS = [150, 100, 101, 50, 20, 19, 5]
# (class, test images, of which correct)
TABLE = [(0, 4, 3), (1, 2, 1), (2, 2, 2), (3, 2, 0), (4, 2, 2), (5, 2, 0), (6, 4, 1)]


def _predictions() -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets realising TABLE: a correct image scores its class highest, a wrong one class
    (c + 1) % 7."""
    logits, targets = [], []
    for cls, total, correct in TABLE:
        for i in range(total):
            row = np.zeros(7, dtype=np.float32)
            row[cls if i < correct else (cls + 1) % 7] = 5.0
            logits.append(row)
            targets.append(cls)
    return np.stack(logits), np.array(targets)


def test_group_membership_and_accuracies_by_hand():
    logits, targets = _predictions()
    summary = summarize(logits, targets, COUNTS, GroupThresholds(100, 20))
    assert summary["groups"] == ["many", "medium", "many", "medium", "medium", "few", "few"]
    assert summary["many"] == pytest.approx(5 / 6)  # classes 0, 2: 3 + 2 of 4 + 2
    assert summary["medium"] == pytest.approx(3 / 6)  # classes 1, 3, 4: 1 + 0 + 2 of 2 + 2 + 2
    assert summary["few"] == pytest.approx(1 / 6)  # classes 5, 6: 0 + 1 of 2 + 4
    assert summary["top1"] == pytest.approx(9 / 18)
    assert summary["per_class"] == pytest.approx([0.75, 0.5, 1.0, 0.0, 1.0, 0.0, 0.25])
    other = summarize(logits, targets, COUNTS, GroupThresholds(40, 10))
    assert other["groups"] == ["many", "many", "many", "many", "medium", "medium", "few"]
    assert (other["many"], other["medium"], other["few"]) == pytest.approx((6 / 10, 2 / 4, 1 / 4))
    assert other["thresholds"] == {"many": 40, "few": 10}


def test_the_authors_split_by_class_index_is_the_mean_per_class_accuracy_of_index_ranges():
    """Their validate(): acc_classes[a:b].mean() over classes [0, 2), [2, 5), [5, 7) for bounds (2, 5): a mean of
    per-class accuracies (not of images): (0.75 + 0.5) / 2, (1 + 0 + 1) / 3, (0 + 0.25) / 2."""
    logits, targets = _predictions()
    summary = summarize(logits, targets, COUNTS, GroupThresholds(100, 20), index_groups=(2, 5))
    split = summary["by_class_index"]
    assert split["bounds"] == [2, 5]
    assert (split["many"], split["medium"], split["few"]) == pytest.approx((0.625, 2 / 3, 0.125))
    assert summary["many"] == pytest.approx(5 / 6), "the split by training count is unchanged beside it"
    assert "by_class_index" not in summarize(logits, targets, COUNTS, GroupThresholds(100, 20))
    # bounds (5, 7): the "few" range [7, 7) holds no class, so it has no accuracy (None, not NaN)
    empty = summarize(logits, targets, COUNTS, GroupThresholds(100, 20), index_groups=(5, 7))["by_class_index"]
    assert empty["few"] is None and empty["many"] == pytest.approx((0.75 + 0.5 + 1 + 0 + 1) / 5)


def test_prior_softmax_and_top_k_of_the_long_tail_module():
    from pih2t_deploy.data.longtail import log_prior, logit_adjusted, softmax, top_k

    assert log_prior([3, 1]).tolist() == pytest.approx([np.log(0.75), np.log(0.25)])
    with pytest.raises(ValueError, match=r"^class 1 has 0 training images: the class prior needs a positive"):
        log_prior([5, 0, 2])
    # z - tau log prior with tau 1 and prior (0.75, 0.25): equal logits -> the tail class gains log 3
    assert logit_adjusted(np.zeros(2), [3, 1], 1.0).tolist() == pytest.approx([-np.log(0.75), -np.log(0.25)])
    probabilities = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]))
    np.testing.assert_allclose(probabilities, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-12)
    # one row (1-D) and float32 scores: still the last axis, computed in float64
    single = softmax(np.array([0.0, 1.0], dtype=np.float32))
    assert single.dtype == np.float64
    np.testing.assert_allclose(single, [1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-15)
    assert top_k(np.array([[0.1, 0.5, 0.5, 0.2]]), 3).tolist() == [[1, 2, 3]], "ties: the lower index first"
    assert top_k(np.array([2.0, 1.0]), 5).tolist() == [0, 1]


def test_thresholds_come_from_the_metadata():
    assert GroupThresholds.from_meta({"data": {"many_threshold": 40, "few_threshold": 10}}) == GroupThresholds(40, 10)
    assert GroupThresholds.from_meta({}) == GroupThresholds(100, 20)


def _digits_groups(meta: dict) -> list[str]:
    return GroupThresholds(meta["data"]["many_threshold"], meta["data"]["few_threshold"]).groups(meta["class_counts"])


def test_eval_uses_the_checkpoints_thresholds(digits_artifact, tmp_path):
    """Digits-LT records 40/10; with the defaults (100/20) only one of its classes would be Many."""
    ckpt, _ = digits_artifact
    done = run_cli("eval", "--ckpt", str(ckpt), "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["thresholds"] == {"many": 40, "few": 10}
    per_class, groups = np.array(summary["per_class"]), np.array(summary["groups"])
    for group in ("many", "medium", "few"):  # 50 test images per class: the group mean is the per-class mean
        assert summary[group] == pytest.approx(per_class[groups == group].mean())
    assert (groups == "many").sum() >= 3 and (groups == "few").sum() >= 3


def test_export_judges_groups_by_the_checkpoints_thresholds(digits_artifact, digits_eval, tmp_path):
    from pih2t_deploy.export.exporter import export_checkpoint
    from pih2t_deploy.export.options import ExportOptions

    result = export_checkpoint(digits_artifact[0], ExportOptions(output=tmp_path / "e", eval_data="recipe"))
    for group in ("many", "medium", "few"):
        assert result.manifest.accuracy["pytorch"][group] == pytest.approx(digits_eval[group]), group


def test_demo_tags_classes_by_the_artifacts_thresholds(digits_artifact):
    from pih2t_deploy.runtime import load_classifier
    from pih2t_deploy.serving.demo import LongTailExplainer

    classifier = load_classifier(digits_artifact[1])
    meta = classifier.info.meta
    explainer = LongTailExplainer(classifier)
    assert explainer.groups == _digits_groups(meta)
    assert explainer.groups != GroupThresholds().groups(meta["class_counts"])


def test_calibration_error_by_hand():
    """Six predictions, 15 equal-width bins: 0.87 (right) and 0.92 (wrong) share (0.867, 0.933]; 0.62 (wrong)
    and 0.41 (right) are alone; 0.95 (right) and 1.0 (wrong: the top edge belongs to the last bin) share
    (0.933, 1]. ECE = (2 |0.5 - 0.895| + |0 - 0.62| + |1 - 0.41| + 2 |0.5 - 0.975|) / 6. With 16 bins 0.87 and
    0.92 would fall apart, and without the top edge 1.0 would count nowhere."""
    from pih2t_deploy.evaluation import expected_calibration_error

    probs = np.array(
        [
            [0.87, 0.08, 0.05],
            [0.92, 0.08, 0.00],
            [0.38, 0.62, 0.00],
            [0.30, 0.29, 0.41],
            [0.95, 0.05, 0.00],
            [1.00, 0.00, 0.00],
        ]
    )
    targets = np.array([0, 1, 0, 2, 0, 1])
    expected = (2 * 0.395 + 0.62 + 0.59 + 2 * 0.475) / 6
    assert expected_calibration_error(probs, targets) == pytest.approx(expected)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # sure and right: perfectly calibrated
    # 2 bins, (0, 0.5] and (0.5, 1]: a confidence of exactly 0.5 belongs to the lower one only.
    # ECE = 1/3 |1 - 0.5| + 2/3 |0.5 - 0.8|
    two = np.array([[0.5, 0.5], [0.3, 0.7], [0.9, 0.1]])
    assert expected_calibration_error(two, np.zeros(3, dtype=int), bins=2) == pytest.approx(0.5 / 3 + 0.6 / 3)


def test_top5_confusion_and_classes_without_test_images_by_hand():
    """Seven classes, four images: class 0 ranked 7th, 5th (a top-5 hit) and 6th (a miss), class 3 first."""
    logits = np.array(
        [[0, 6, 5, 4, 3, 2, 1], [2, 7, 6, 5, 4, 1, 0], [0, 1, 2, 9, 3, 4, 5], [1, 7, 6, 5, 4, 3, 0]],
        dtype=np.float32,
    )
    targets = np.array([0, 0, 3, 0])
    summary = summarize(logits, targets, COUNTS, GroupThresholds(100, 20))
    assert (summary["top1"], summary["top5"], summary["num_images"]) == (0.25, 0.5, 4)
    assert summary["per_class"] == [0.0, None, None, 1.0, None, None, None]
    assert (summary["many"], summary["medium"], summary["few"]) == (0.0, 1.0, None)  # no Few image at all
    confusion = [[0] * 7 for _ in range(7)]
    confusion[0][1], confusion[3][3] = 3, 1
    assert summary["confusion"] == confusion and all(type(v) is int for row in summary["confusion"] for v in row)
    from pih2t_deploy.evaluation import expected_calibration_error

    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert summary["ece"] == pytest.approx(expected_calibration_error(probs, targets))


def test_predict_runs_the_model_in_eval_mode_over_the_loader_by_hand():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pih2t_deploy.training.predict import predict

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Dropout(0.9))
    torch.nn.init.eye_(model[0].weight)
    torch.nn.init.zeros_(model[0].bias)
    data = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    loader = DataLoader(TensorDataset(data, torch.tensor([2, 0, 1])), batch_size=2)
    logits, targets = predict(model, loader, torch.device("cpu"))
    assert not model.training
    np.testing.assert_array_equal(logits, [[1, 2, 0], [3, 4, 0], [5, 6, 0]])  # dropout off: exact
    assert logits.dtype == np.float32 and targets.tolist() == [2, 0, 1]


def test_the_summary_plot_is_written_by_hand(tmp_path):
    from pih2t_deploy.evaluation import plot_summary

    logits, targets = _predictions()
    summary = summarize(logits, targets, COUNTS, GroupThresholds(100, 20))
    path = plot_summary(summary, [f"c{i}" for i in range(7)], COUNTS, tmp_path / "summary.png")
    assert path == tmp_path / "summary.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_ties_keep_the_lower_class_first_and_k_zero_is_empty_by_hand():
    """Forty scores in two tied blocks: the best k are the lower indices of the higher block, in order (numpy's
    default sort reorders ties beyond 16 elements: [24, 25, 26, 27, 31, 30, ...])."""
    from pih2t_deploy.data.longtail import log_prior, top_k

    scores = np.array([1.0] * 20 + [2.0] * 20)
    assert top_k(scores, 6).tolist() == [20, 21, 22, 23, 24, 25]
    assert top_k(np.zeros((2, 40)), 0).shape == (2, 0)
    with pytest.raises(ValueError) as refused:
        log_prior([5, 0])
    assert str(refused.value) == (
        "class 1 has 0 training images: the class prior needs a positive count for every class"
    )


def test_the_default_selection_is_numpys_generator_by_hand():
    from pih2t_deploy.data.longtail import select_longtail

    labels = [c for c in range(3) for _ in range(10)]
    default = select_longtail(labels, [6, 3, 1], seed=4)
    assert default.tolist() == select_longtail(labels, [6, 3, 1], seed=4, method="generator").tolist()
    assert default.tolist() != select_longtail(labels, [6, 3, 1], seed=4, method="authors").tolist()
    assert len(default) == 10


def test_the_per_class_axis_names_each_class_and_its_count_in_the_order_shown():
    """eval.png's per-class bars go head to tail: each tick names its class and training count, so a folder
    whose class names are digits is not read as sorted by class index."""
    from pih2t_deploy.data.longtail import top_k
    from pih2t_deploy.evaluation import class_axis_labels

    names, counts = ["0", "1", "2", "3"], [5, 50, 20, 1]
    order = top_k(np.asarray(counts), len(counts))
    assert class_axis_labels(names, counts, order) == ["1 (50)", "2 (20)", "0 (5)", "3 (1)"]
    assert class_axis_labels([str(i) for i in range(31)], list(range(31)), list(range(31))) == []
