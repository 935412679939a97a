"""The validation split, the tau and temperature chosen on it (checked against scikit-learn and SciPy), their
exact fold into the classifier, the per-request tau of a temperature-scaled artifact, and a short training run
whose choices are recomputed independently from its saved model and the same split, and whose TensorBoard
scalars are read back with TensorBoard's own reader, and whose artifact's model card huggingface_hub reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import balanced_accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pih2t_deploy.data.datasets import ArrayImages
from pih2t_deploy.data.label_shift import PriorModel
from pih2t_deploy.data.longtail import log_prior
from pih2t_deploy.data.validation import split_per_class
from pih2t_deploy.fold import fold
from pih2t_deploy.training.posthoc import TAU_GRID, choose_posthoc, fit_temperature
from tests.helpers import make_net, run_cli

COUNTS = [40, 20, 8, 4, 2]


def _images(counts: list[int]) -> ArrayImages:
    targets = np.repeat(np.arange(len(counts)), counts)
    pixels = np.arange(len(targets), dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)  # image i is i
    return ArrayImages(pixels, targets, [f"c{i}" for i in range(len(counts))])


def test_the_split_holds_out_a_share_of_every_class_and_keeps_one_training_image_each():
    data = _images([10, 5, 2, 1])
    train, val, split = split_per_class(data, 0.2, seed=3)
    assert val.class_counts == [2, 1, 1, 0] and train.class_counts == [8, 4, 1, 1]
    seen = [int(p[0, 0]) for p in train.pixels] + [int(p[0, 0]) for p in val.pixels]
    assert sorted(seen) == list(range(18)), "every image once, in one part"
    assert [int(p[0, 0]) for p in split_per_class(data, 0.2, seed=3)[1].pixels] == [int(p[0, 0]) for p in val.pixels]
    assert split.describe() == (
        "validation: 4 images (20% of each class's training images); 1 class(es) too small to split keep their "
        "only image for training and have no validation image: c3"
    )


def _validation_logits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a head-biased, over-confident classifier on a balanced validation set."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(len(COUNTS)), 30)
    logits = rng.normal(0, 1.0, (len(targets), len(COUNTS))) + 2.0 * np.eye(len(COUNTS))[targets]
    logits += 0.8 * log_prior(COUNTS)  # the training prior leaks into the logits: the tail loses
    return 4.0 * logits, targets  # and the scale makes it over-confident


def test_tau_is_the_grid_value_of_the_best_balanced_accuracy_by_scikit_learn():
    logits, targets = _validation_logits()
    choice = choose_posthoc(logits, targets, COUNTS)
    scores = [balanced_accuracy_score(targets, (logits - tau * log_prior(COUNTS)).argmax(1)) for tau in TAU_GRID]
    assert choice.tau == TAU_GRID[int(np.argmax(scores))] and choice.tau > 0
    assert choice.val_balanced_accuracy_after == pytest.approx(max(scores))
    assert choice.val_balanced_accuracy_after > choice.val_balanced_accuracy_before
    assert choice.val_ece_after < choice.val_ece_before and choice.val_nll_after < choice.val_nll_before


def test_the_temperature_minimises_the_nll_as_scipy_finds_it():
    logits, targets = _validation_logits(1)

    def nll(temperature: float) -> float:
        return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(targets)), targets].mean())

    reference = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8}).x
    assert fit_temperature(logits, targets) == pytest.approx(reference, rel=1e-3)
    assert reference > 1, "the scaled logits are over-confident"


def test_tau_and_temperature_fold_exactly_and_a_request_tau_equals_a_refold():
    net = make_net("digits_net", method="pih2t", lws=True)
    counts = [30, 20, 12, 9, 5, 3, 2]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain, report = fold(net, input_shape=(1, 8, 8), logit_adjust_tau=0.7, class_counts=counts, temperature=2.5)
    refolded, _ = fold(net, input_shape=(1, 8, 8), logit_adjust_tau=1.6, class_counts=counts, temperature=2.5)
    assert report.temperature == 2.5
    with torch.no_grad():
        expected = (net.double()(x) - 0.7 * torch.from_numpy(log_prior(counts))) / 2.5
        assert torch.allclose(plain.double()(x), expected, atol=1e-5)
        served = PriorModel(log_prior(counts), folded_tau=0.7, balanced=False, temperature=2.5)
        shifted = plain.double()(x).numpy() + served.adjustment(tau=1.6)
        assert np.allclose(shifted, refolded.double()(x).numpy(), atol=1e-5)


def test_a_run_with_validation_keeps_the_best_epoch_and_its_choices_are_recomputed_independently(tmp_path):
    """Train on the digits folder with 20% held out: the kept stage-2 epoch is the best of metrics.jsonl's
    validation scores; tau and the temperature recomputed from model.pt on the same split (scikit-learn and
    SciPy) are the recorded ones; the export folds them by default, so ONNX answers (z - tau log p) / T."""
    from pih2t_deploy.checkpoint import load_checkpoint
    from pih2t_deploy.data.digits_folder import write_digits_folder
    from pih2t_deploy.data.sources import DataConfig, build_data
    from pih2t_deploy.runtime import load_classifier
    from pih2t_deploy.training.predict import predict

    write_digits_folder(tmp_path / "digits")
    run = tmp_path / "run"
    trained = run_cli(
        "train", "--recipe", "training/digits-folder.yaml", "--output", str(run), f"data.root={tmp_path / 'digits'}",
        "data.val_fraction=0.2", "stage1.epochs=12", "stage2.epochs=4", "runtime.progress=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    log = trained.stdout + trained.stderr
    assert "validation: 67 images (20% of each class's training images)" in log
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stage2 = [h for h in history if h["stage"] == 2]
    best = max(stage2, key=lambda h: (h["val"]["balanced"], -h["epoch"]))
    assert metrics["validation"]["best_stage2_epoch"] == best["epoch"]
    assert f"epoch {best['epoch']} of 4 kept, the best on validation" in log
    recorded = metrics["validation"]["posthoc"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    balanced = [(e.step, e.value) for e in events.Scalars("stage2/val_balanced")]
    assert balanced == [(h["epoch"], pytest.approx(h["val"]["balanced"])) for h in stage2]
    assert [e.step for e in events.Scalars("stage1/loss")] == list(range(1, 13))
    assert events.Scalars("final/test_ece")[0].value == pytest.approx(metrics["ece"])
    after = metrics["validation"]["test"]["after_posthoc"]
    assert events.Scalars("final/test_after_posthoc_few")[0].value == pytest.approx(after["few"])

    ckpt = load_checkpoint(run / "model.pt")
    assert ckpt.meta["posthoc"] == recorded
    bundle = build_data(DataConfig.from_dict(ckpt.meta["data"]))
    loader = torch.utils.data.DataLoader(bundle.val, batch_size=256)
    logits, targets = predict(ckpt.net, loader, torch.device("cpu"))
    counts = bundle.train.class_counts
    assert balanced_accuracy_score(targets, logits.argmax(1)) == pytest.approx(best["val"]["balanced"]), (
        "model.pt holds the weights of the kept epoch"
    )
    scores = [balanced_accuracy_score(targets, (logits - t * log_prior(counts)).argmax(1)) for t in TAU_GRID]
    assert recorded["tau"] == TAU_GRID[int(np.argmax(scores))]
    adjusted = logits - recorded["tau"] * log_prior(counts)

    def nll(temperature: float) -> float:
        return float(-log_softmax(adjusted / temperature, axis=1)[np.arange(len(targets)), targets].mean())

    assert recorded["temperature"] == pytest.approx(minimize_scalar(nll, bounds=(0.05, 20), method="bounded").x, 1e-3)
    with Image.open(run / "reliability.png") as diagram:
        assert diagram.size[0] > 100
    assert metrics["validation"]["test"]["after_posthoc"]["ece"] < metrics["ece"], "calibration helps on test too"

    exported = run_cli("export", "--ckpt", str(run / "model.pt"), "--output", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert f"folding logit-adjust tau {recorded['tau']:g} and temperature" in exported.stdout + exported.stderr
    card = ModelCard.load(tmp_path / "export" / "README.md")  # huggingface_hub's own reader
    metrics_by_name = {r.metric_name: r.metric_value for r in card.data.eval_results}
    after = metrics["validation"]["test"]["after_posthoc"]
    assert metrics_by_name["Few-shot top-1"] == pytest.approx(round(100 * after["few"], 2))
    assert metrics_by_name["expected calibration error"] == pytest.approx(round(after["ece"], 4))
    assert "the training run's test set, with the tau and temperature chosen on validation" in card.text
    assert f"| 0 | eight | {counts[0]} | " in card.text  # classes with their training counts and groups
    classifier = load_classifier(tmp_path / "export")
    assert "README.md" in classifier.info.manifest.files, "the card is hashed like every other file"
    assert classifier.info.folded_tau == recorded["tau"]
    assert classifier.info.folded_temperature == recorded["temperature"]
    images = [bundle.test.image(i) for i in range(8)]
    with torch.no_grad():
        z = ckpt.net(torch.from_numpy(classifier.prepare(images))).double().numpy()
    expected = (z - recorded["tau"] * log_prior(ckpt.class_counts)) / recorded["temperature"]
    assert np.allclose(classifier.predict(classifier.prepare(images)), expected, atol=1e-4)


def test_the_kept_epoch_is_restored_before_the_choices_are_made(tmp_path):
    """The weights saved as the best on validation replace the final ones before tau and T are chosen."""
    from pih2t_deploy.data.sources import build_data
    from pih2t_deploy.training.engine import BEST_VAL_FILE, Trainer
    from pih2t_deploy.training.recipe import load_recipe

    recipe = load_recipe("digits-lt", ["data.val_fraction=0.2", "runtime.progress=false"])
    trainer = Trainer(recipe, tmp_path, log=lambda _m: None)
    trainer.output.mkdir(exist_ok=True)
    bundle = build_data(recipe.data)
    best, final = make_net("digits_net", num_classes=10, seed=1), make_net("digits_net", num_classes=10, seed=2)
    torch.save({"balanced": 0.5, "net": best.state_dict()}, tmp_path / BEST_VAL_FILE)
    history = [{"stage": 2, "epoch": e, "val": {"balanced": b}} for e, b in ((1, 0.5), (2, 0.4))]
    chosen = trainer._choose_on_validation(final, bundle, history)
    assert chosen["best_stage2_epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), best.state_dict().values(), strict=True))


def test_a_temperature_at_the_edge_of_its_range_is_flagged_in_the_log_line():
    """Perfectly separated validation images: the NLL keeps falling as T -> 0, so T ends on the search's edge."""
    targets = np.repeat(np.arange(3), 5)
    separated = choose_posthoc(5.0 * np.eye(3)[targets], targets, [10, 5, 2])
    assert separated.temperature_at_bound and "not well determined" in separated.describe()
    assert not choose_posthoc(*_validation_logits(), COUNTS).temperature_at_bound
