"""Label-shift arithmetic on hand-made numbers: the EM estimate on a shift with a known answer, the reference
prior each kind of training implies, the per-request adjustment, the bounded correction, the window."""

from __future__ import annotations

import numpy as np
import pytest

from pih2t_deploy.data.label_shift import (
    Correction,
    PriorModel,
    PriorWatch,
    estimate_prior,
    normalised_log_prior,
    total_variation,
    trained_balanced,
)

# three classes, four observable inputs: p(x | y), each row a class
LIKELIHOOD = np.array([[0.70, 0.20, 0.05, 0.05], [0.10, 0.60, 0.20, 0.10], [0.05, 0.05, 0.30, 0.60]])


def posteriors_under(reference: np.ndarray) -> np.ndarray:
    """p(y | x) for each of the four inputs, for a model calibrated to the prior ``reference``: [4, 3]."""
    joint = LIKELIHOOD.T * reference
    return joint / joint.sum(axis=1, keepdims=True)


def sample_of(deployment: np.ndarray, size: int) -> np.ndarray:
    """Input indices drawn so that their frequencies are exactly those of the deployment mixture."""
    frequencies = deployment @ LIKELIHOOD  # p_q(x)
    counts = np.round(frequencies * size).astype(int)
    return np.repeat(np.arange(4), counts)


@pytest.mark.parametrize(
    ("reference", "deployment"),
    [
        (np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.3, 0.6])),  # the long tail reversed
        (np.array([0.6, 0.3, 0.1]), np.array([1 / 3, 1 / 3, 1 / 3])),
        (np.array([1 / 3, 1 / 3, 1 / 3]), np.array([0.5, 0.45, 0.05])),
    ],
)
def test_em_recovers_a_known_deployment_prior(reference, deployment):
    """Posteriors calibrated to ``reference``, inputs drawn (exactly in proportion) from the ``deployment``
    mixture: EM's fixed point is the deployment prior itself."""
    rows = posteriors_under(reference)[sample_of(deployment, 100_000)]
    estimated = estimate_prior(rows, np.log(reference))
    np.testing.assert_allclose(estimated, deployment, atol=2e-3)
    assert total_variation(estimated, deployment) < 2e-3
    unshifted = estimate_prior(posteriors_under(reference)[sample_of(reference, 100_000)], np.log(reference))
    np.testing.assert_allclose(unshifted, reference, atol=2e-3)  # no shift: the reference comes back


def test_the_reference_prior_follows_how_the_classifier_was_trained():
    counts = [80, 15, 5]
    train = np.array(counts) / 100
    instance = {"method": "ce", "stage": 2, "training": {"stage2": {"sampler": "instance"}, "loss": {"name": "ce"}}}
    balanced = {"method": "pih2t", "stage": 2, "training": {"stage2": {"sampler": "class"}, "loss": {"name": "ce"}}}
    assert not trained_balanced(instance) and trained_balanced(balanced)
    assert trained_balanced({"method": "ce", "training": {"stage2": {"sampler": "instance"}, "loss": {"name": "ldam"}}})
    assert trained_balanced({"method": "h2t"}) and not trained_balanced({"method": "ce"})  # authors' imports
    np.testing.assert_allclose(np.exp(PriorModel.from_artifact(counts, instance, 0.0).log_reference_prior), train)
    np.testing.assert_allclose(np.exp(PriorModel.from_artifact(counts, balanced, 0.0).log_reference_prior), [1 / 3] * 3)
    folded = np.exp(PriorModel.from_artifact(counts, instance, 0.5).log_reference_prior)  # p^(1 - 0.5), normalised
    np.testing.assert_allclose(folded, np.sqrt(train) / np.sqrt(train).sum())


def test_a_requests_tau_and_prior_shift_the_logits_as_a_refold_would():
    counts = [80, 15, 5]
    model = PriorModel.from_artifact(counts, {"method": "pih2t"}, folded_tau=0.5)
    log_p = np.log(np.array(counts) / 100)
    np.testing.assert_allclose(model.adjustment(tau=1.5), -(1.5 - 0.5) * log_p)
    q = normalised_log_prior([2, 1, 1], 3)
    np.testing.assert_allclose(q, np.log([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(model.adjustment(tau=0.5, log_prior=q), q)
    np.testing.assert_allclose(model.adjustment(), 0.0)
    assert normalised_log_prior([1, 0, 0], 3)[1] == pytest.approx(np.log(1e-30))
    for bad, message in (([1, 2], "one number per class"), ([1, -1, 1], "non-negative"), ([0, 0, 0], "positive sum")):
        with pytest.raises(ValueError, match=message):
            normalised_log_prior(bad, 3)
    with pytest.raises(ValueError, match="finite"):
        normalised_log_prior([1, np.nan, 1], 3)


def test_the_correction_is_smoothed_toward_the_reference_and_bounded():
    reference = np.log(np.array([0.5, 0.3, 0.2]))
    weights = np.exp(Correction(smoothing=0.1, max_weight=10).log_weights(np.array([0.0, 0.2, 0.8]), reference))
    expected = np.array([0.9 * 0.0 + 0.1 * 0.5, 0.9 * 0.2 + 0.1 * 0.3, 0.9 * 0.8 + 0.1 * 0.2]) / np.exp(reference)
    np.testing.assert_allclose(weights, np.clip(expected, 0.1, 10))
    assert weights[0] == pytest.approx(0.1)  # 0.05 / 0.5 = 0.1, at the bound
    extreme = np.exp(Correction(smoothing=0.0, max_weight=10).log_weights(np.array([0.0, 0.0, 1.0]), reference))
    np.testing.assert_allclose(extreme, [0.1, 0.1, 5.0])


def test_the_window_keeps_the_last_answers_and_reports_when_the_correction_is_ready():
    model = PriorModel.from_artifact([60, 30, 10], {"method": "ce"}, 0.0)
    watch = PriorWatch(model, window=4, refresh=1, min_samples=6)
    for value in range(7):
        row = np.zeros((1, 3))
        row[0, value % 3] = 1.0
        watch.add(row)
        assert (watch.adapted() is None) == (value < 5)
    assert watch.seen == 7 and watch.capacity == 4
    kept = sorted(int(np.argmax(r)) for r in watch.rows)
    assert kept == sorted([3 % 3, 4 % 3, 5 % 3, 6 % 3])  # the last four answers
    report = watch.report()
    assert (report["samples"], report["window"]) == (7, 4)
    assert report["train_prior"] == pytest.approx([0.6, 0.3, 0.1])
    assert report["total_variation"] == pytest.approx(total_variation(report["estimated_prior"], [0.6, 0.3, 0.1]))
    assert report["correction"]["ready"] and len(report["correction"]["weights"]) == 3
    watch.add(np.tile([[0.2, 0.3, 0.5]], (10, 1)))  # a batch larger than the window keeps its last rows
    assert watch.seen == 17 and np.allclose(watch.rows, [0.2, 0.3, 0.5])


def test_the_reference_prior_is_measured_as_the_prior_that_em_maps_onto_the_labels():
    """Posteriors calibrated to r = (0.6, 0.3, 0.1); labelled inputs drawn (exactly in proportion) from a
    uniform class mix. The fitted reference is r, and EM with it returns the uniform mix again."""
    from pih2t_deploy.data.label_shift import fit_reference_prior

    reference, drawn = np.array([0.6, 0.3, 0.1]), np.full(3, 1 / 3)
    counts = np.round(100_000 * drawn[:, None] * LIKELIHOOD).astype(int)  # [class, input]
    labels = np.repeat(np.repeat(np.arange(3), 4), counts.ravel())
    inputs = np.repeat(np.tile(np.arange(4), 3), counts.ravel())
    rows = posteriors_under(reference)[inputs]
    fitted = fit_reference_prior(rows, labels)
    np.testing.assert_allclose(fitted, reference, atol=2e-3)
    np.testing.assert_allclose(estimate_prior(rows, np.log(fitted)), drawn, atol=2e-3)
    assert fit_reference_prior(rows[labels != 2], labels[labels != 2]) is None  # a class without images
    model = PriorModel.from_artifact([80, 15, 5], {"method": "ce"}, 0.0, measured_reference=fitted)
    np.testing.assert_allclose(np.exp(model.log_reference_prior), fitted)
    assert model.reference_basis == "measured on labelled images at export"
