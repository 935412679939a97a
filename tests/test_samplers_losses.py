"""Samplers' distributions and every loss against its formula."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pih2t_deploy.data.samplers import make_sampler
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.training.losses import BalancedSoftmax, GCLLoss, LDAMLoss, build_loss

COUNTS = [400, 200, 100, 50, 20, 10]
TARGETS = np.repeat(np.arange(6), COUNTS)


def _class_frequencies(kind, epochs=20):
    sampler = make_sampler(kind, TARGETS, seed=1)
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    return np.bincount(TARGETS[drawn], minlength=6) / len(drawn)


def test_class_balanced_draws_classes_uniformly():
    np.testing.assert_allclose(_class_frequencies("class"), np.full(6, 1 / 6), atol=0.01)


def test_square_root_draws_classes_by_sqrt_count():
    expected = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()
    np.testing.assert_allclose(_class_frequencies("sqrt"), expected, atol=0.01)


def test_instance_balanced_is_a_permutation_each_epoch():
    sampler = make_sampler("instance", TARGETS, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(len(TARGETS))) and first != second


def test_ranks_split_one_global_sequence():
    whole = list(make_sampler("class", TARGETS, seed=3))
    parts = [list(make_sampler("class", TARGETS, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert parts[0] == whole[0::2][: len(parts[0])] and parts[1] == whole[1::2][: len(parts[1])]
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("balanced", TARGETS)


def test_ldam_subtracts_margins_from_cosines_and_reweights_after_the_reweight_epoch():
    loss = LDAMLoss(COUNTS, cosine_scale=16.0, max_m=0.5, s=30, reweight_epoch=5)
    assert loss.margins.max().item() == pytest.approx(0.5) and loss.margins.argmax().item() == 5
    logits, targets = torch.randn(8, 6) * 8, torch.randint(0, 6, (8,))
    margin = F.one_hot(targets, 6) * loss.margins
    plain = F.cross_entropy(30 * (logits / 16 - margin), targets)
    assert loss(logits, targets, epoch=5).item() == pytest.approx(plain.item(), rel=1e-6)
    weighted = F.cross_entropy(30 * (logits / 16 - margin), targets, weight=loss.drw_weights)
    assert loss(logits, targets, epoch=6).item() == pytest.approx(weighted.item(), rel=1e-6)
    assert loss.drw_weights[-1] > loss.drw_weights[0]


def test_balanced_softmax_adds_the_log_prior():
    logits, targets = torch.randn(8, 6), torch.randint(0, 6, (8,))
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    expected = F.cross_entropy(logits + torch.log(prior), targets)
    assert BalancedSoftmax(COUNTS)(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_margin_losses_need_a_cosine_head_and_name_what_is_wrong():
    with pytest.raises(ConfigError, match=r"^loss gcl works on cosine similarities: set model.head=cosine$"):
        build_loss("gcl", COUNTS, head="linear", cosine_scale=16)
    with pytest.raises(ConfigError, match=r"^loss ldam works on cosine similarities"):
        build_loss("ldam", COUNTS, head="linear", cosine_scale=16)
    with pytest.raises(ConfigError, match=r"choose one of: ce, ldam, balanced_softmax, gcl$"):
        build_loss("focal", COUNTS, head="linear", cosine_scale=16)
    with pytest.raises(ConfigError, match="does not take"):
        build_loss("ldam", COUNTS, head="cosine", cosine_scale=16, gamma=2.0)


def test_ldam_against_hand_computed_numbers():
    """Two classes with 16 and 1 training images. Margins C / n^(1/4): 16^-1/4 = 0.5 and 1, scaled so the
    largest is max_m 0.5 -> 0.25 and 0.5. DRW weights (1 - beta) / (1 - beta^n) with beta 0.5: 0.500008 and 1,
    normalised to sum to C = 2 -> 0.666673 and 1.333327. The cosine head's logits [2, 4] at cosine_scale 4
    are the cosines [0.5, 1.0]; with s = 2 and target 0: s (cos - m e_0) = [0.5, 2.0], so
    CE = log(e^0.5 + e^2) - 0.5 = 1.701413 (scaling the logits instead of the cosines would give 2.6 more)."""
    loss = LDAMLoss([16, 1], cosine_scale=4.0, max_m=0.5, s=2.0, reweight_epoch=3, beta=0.5)
    assert loss.margins.tolist() == pytest.approx([0.25, 0.5])
    assert loss.drw_weights.tolist() == pytest.approx([0.666673448, 1.333326552], rel=1e-6)
    logits, target = torch.tensor([[2.0, 4.0]]), torch.tensor([0])
    assert loss(logits, target, epoch=0).item() == pytest.approx(1.7014132780, rel=1e-6)
    batch, targets = torch.tensor([[2.0, 4.0], [2.0, 4.0]]), torch.tensor([0, 1])
    # second row, target 1: s (cos - m e_1) = [1, 1] -> CE = log 2. Epoch 3 is not yet after reweight_epoch 3.
    assert loss(batch, targets, epoch=3).item() == pytest.approx((1.7014132780 + math.log(2)) / 2, rel=1e-6)
    # epoch 4: the weighted mean (w0 * 1.701413 + w1 * log 2) / (w0 + w1) = 1.029239
    assert loss(batch, targets, epoch=4).item() == pytest.approx(1.0292392984, rel=1e-6)
    never = LDAMLoss([16, 1], cosine_scale=4.0, s=2.0, reweight_epoch=-1, beta=0.5)
    assert never(batch, targets, epoch=500).item() == pytest.approx((1.7014132780 + math.log(2)) / 2, rel=1e-6)
    at_once = LDAMLoss([16, 1], cosine_scale=4.0, max_m=0.5, s=2.0, reweight_epoch=0, beta=0.5)  # 0 is an epoch
    assert at_once(batch, targets, epoch=1).item() == pytest.approx(1.0292392984, rel=1e-6)


def test_gcl_without_noise_has_the_margin_at_the_target_and_the_focal_term():
    """Counts 3 and 1, cosine_scale 10, logits [3, 2] -> cosines [0.3, 0.2]. Margin m 0.1 at target 0:
    [0.2, 0.2]; s 20 -> equal logits, CE = log 2 = 0.693147, p_target = 0.5. Focal gamma 1 weighs it by
    (1 - 0.5): 0.346574. No log prior is added (with one, the loss would move by log 3)."""
    logits, target = torch.tensor([[3.0, 2.0]]), torch.tensor([0])
    plain = GCLLoss([3, 1], cosine_scale=10.0, m=0.1, s=20.0, noise_mul=0.0, gamma=0.0)
    assert plain(logits, target).item() == pytest.approx(math.log(2), rel=1e-6)
    focal = GCLLoss([3, 1], cosine_scale=10.0, m=0.1, s=20.0, noise_mul=0.0, gamma=1.0)
    assert focal(logits, target).item() == pytest.approx(0.3465735903, rel=1e-6)
    assert plain.cloud.tolist() == [0.0, 1.0]


def test_gcl_noise_is_the_absolute_value_of_a_clipped_gaussian_with_standard_deviation_one_third():
    """Logits 0, margin 0, s 1 and the tail class's cloud 1: the tail logit is -noise_mul * |eps|, recovered
    from the two-class loss. |N(0, 1/3)| has mean (1/3) sqrt(2/pi) = 0.2660 (a standard deviation of
    1/sqrt(3), as we had, gives 0.4607), and |eps| > 1 is clipped to 1."""
    loss = GCLLoss([1, 2], cosine_scale=1.0, m=0.0, s=1.0, noise_mul=1.0)  # class 0 is the tail (cloud 1)
    torch.manual_seed(0)
    eps = []
    for _ in range(4000):
        value = loss(torch.zeros(1, 2), torch.tensor([1])).item()  # log(1 + exp(-|eps|)) for the head target
        eps.append(-math.log(math.expm1(value)))
    eps = np.array(eps)
    assert eps.min() >= -1e-6 and eps.max() <= 1 + 1e-6
    assert eps.mean() == pytest.approx(0.2660, abs=0.01)
    assert np.std(eps) == pytest.approx((1 / 3) * math.sqrt(1 - 2 / math.pi), abs=0.01)


def test_published_defaults_of_ldam_drw_and_gcl():
    """LDAM-DRW as published: largest margin 0.5, scale 30, re-weighting after epoch 160 with beta 0.9999.
    GCL's stage-1 defaults: margin 0, scale 30, noise_mul 0.5, no focal term."""
    loss = LDAMLoss([100, 10], cosine_scale=30.0)
    assert (loss.margins.max().item(), loss.s, loss.reweight_epoch) == (pytest.approx(0.5), 30.0, 160)
    effective = [(1 - 0.9999**n) / (1 - 0.9999) for n in (100, 10)]
    weights = [1 / e for e in effective]
    assert loss.drw_weights.tolist() == pytest.approx([2 * w / sum(weights) for w in weights], rel=1e-6)
    gcl = GCLLoss([100, 10], cosine_scale=30.0)
    assert (gcl.m, gcl.s, gcl.noise_mul, gcl.gamma) == (0.0, 30.0, 0.5, 0.0)


def test_build_loss_hands_counts_head_and_parameters_to_the_named_loss():
    counts = [40, 10]
    ce = build_loss("ce", counts, head="linear", cosine_scale=16)
    assert type(ce).__name__ == "CrossEntropy"
    ldam = build_loss("ldam", counts, head="cosine", cosine_scale=16, max_m=0.4, s=10.0)
    assert isinstance(ldam, LDAMLoss) and (ldam.s, ldam.cosine_scale) == (10.0, 16)
    assert ldam.margins.tolist() == pytest.approx([0.4 * (10 / 40) ** 0.25, 0.4])
    balanced = build_loss("balanced_softmax", counts, head="linear", cosine_scale=16, tau=2.0)
    assert balanced.adjust.tolist() == pytest.approx([2 * math.log(0.8), 2 * math.log(0.2)], rel=1e-6)
    gcl = build_loss("gcl", counts, head="cosine", cosine_scale=16, noise_mul=0.25, m=0.1, s=20.0, gamma=1.0)
    assert isinstance(gcl, GCLLoss) and (gcl.cosine_scale, gcl.noise_mul, gcl.m, gcl.s, gcl.gamma) == (
        16,
        0.25,
        0.1,
        20.0,
        1.0,
    )
    assert gcl.cloud.tolist() == [0.0, 1.0]


def test_gcl_focal_weights_each_sample_by_its_own_probability():
    """Two samples, logits [3, 2] with targets 0 and 1 (cosine_scale 10, m 0.1, s 20, no noise): CE log 2 and
    log(1 + e^4); the focal term weighs each by (1 - p) of that sample before the mean, not the mean CE once."""
    logits, targets = torch.tensor([[3.0, 2.0], [3.0, 2.0]]), torch.tensor([0, 1])
    focal = GCLLoss([3, 1], cosine_scale=10.0, m=0.1, s=20.0, noise_mul=0.0, gamma=1.0)
    ces = [math.log(2), math.log(1 + math.exp(4))]
    expected = sum((1 - math.exp(-ce)) * ce for ce in ces) / 2
    assert focal(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_softmax_refuses_a_class_without_training_images_in_one_line():
    from pih2t_deploy.errors import ConfigError
    from pih2t_deploy.training.losses import BalancedSoftmax

    with pytest.raises(ConfigError) as refused:
        BalancedSoftmax([3, 0, 2])
    assert str(refused.value) == (
        "balanced_softmax: class 1 has 0 training images: the class prior needs a positive count for every class"
    )


def test_plain_cross_entropy_by_hand():
    """Logits [2, 0] and [0, 0], targets 0 and 1: (log(1 + e^-2) + log 2) / 2."""
    from pih2t_deploy.training.losses import build_loss

    loss = build_loss("ce", [5, 1], head="linear", cosine_scale=16.0)
    value = loss(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]), epoch=3).item()
    assert value == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2, rel=1e-6)
