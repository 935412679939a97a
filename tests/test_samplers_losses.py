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


def test_ldam_margins_and_deferred_reweighting():
    loss = LDAMLoss(COUNTS, max_margin=0.5, s=30, drw_epoch=5)
    assert loss.margins.max().item() == pytest.approx(0.5) and loss.margins.argmax().item() == 5
    logits, targets = torch.randn(8, 6), torch.randint(0, 6, (8,))
    margin = F.one_hot(targets, 6) * loss.margins
    assert loss(logits, targets, epoch=0).item() == pytest.approx(
        F.cross_entropy(30 * (logits - margin), targets).item()
    )
    weighted = F.cross_entropy(30 * (logits - margin), targets, weight=loss.drw_weights)
    assert loss(logits, targets, epoch=5).item() == pytest.approx(weighted.item())
    assert loss.drw_weights[-1] > loss.drw_weights[0]


def test_balanced_softmax_adds_the_log_prior():
    logits, targets = torch.randn(8, 6), torch.randint(0, 6, (8,))
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    expected = F.cross_entropy(logits + torch.log(prior), targets)
    assert BalancedSoftmax(COUNTS)(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gcl_perturbs_tail_logits_more_and_needs_a_cosine_head():
    loss = GCLLoss(COUNTS, scale=16.0)
    assert loss.m[0] == 0 and loss.m[-1] == pytest.approx(1.0)
    logits, targets = torch.randn(64, 6) * 4, torch.randint(0, 6, (64,))
    torch.manual_seed(0)
    value = loss(logits, targets)
    torch.manual_seed(0)
    noise = (torch.randn_like(logits) / 3**0.5).clamp(-1, 1).abs()
    cosine = logits / 16 - 0.5 * noise * loss.m
    expected = F.cross_entropy(16 * cosine + loss.adjust, targets)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="cosine"):
        build_loss("gcl", COUNTS, head="linear", cosine_scale=16)
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("focal", COUNTS, head="linear", cosine_scale=16)
    with pytest.raises(ConfigError, match="does not take"):
        build_loss("ldam", COUNTS, head="linear", cosine_scale=16, gamma=2.0)


def test_ldam_against_hand_computed_numbers():
    """Two classes with 16 and 1 training images. Margins C / n^(1/4): 16^-1/4 = 0.5 and 1, scaled so the
    largest is max_margin 0.5 -> 0.25 and 0.5. DRW weights from the effective number (1 - beta^n) / (1 - beta)
    with beta 0.5: 1.99997 and 1, inverted and normalised to sum to C = 2 -> 0.666673 and 1.333327."""
    loss = LDAMLoss([16, 1], max_margin=0.5, s=1.0, drw_epoch=3, beta=0.5)
    assert loss.margins.tolist() == pytest.approx([0.25, 0.5])
    assert loss.drw_weights.tolist() == pytest.approx([0.666673448, 1.333326552], rel=1e-6)
    logits, target = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    # s (z - m e_y) = [0.75, 2.0]; CE = log(e^0.75 + e^2) - 0.75
    assert loss(logits, target, epoch=0).item() == pytest.approx(1.5019290813, rel=1e-6)
    batch, targets = torch.tensor([[1.0, 2.0], [1.0, 2.0]]), torch.tensor([0, 1])
    # after drw_epoch: a weighted mean, (w0 * 1.50193 + w1 * CE([1, 1.5], 1)) / (w0 + w1)
    other = math.log(math.exp(1.0) + math.exp(1.5)) - 1.5
    expected = (0.666673448 * 1.5019290813 + 1.333326552 * other) / 2.0
    assert loss(batch, targets, epoch=3).item() == pytest.approx(expected, rel=1e-6)
    assert loss(batch, targets, epoch=2).item() == pytest.approx((1.5019290813 + other) / 2, rel=1e-6)


def test_gcl_without_noise_is_cross_entropy_with_the_log_prior_added():
    """Counts 3 and 1: prior 0.75 / 0.25. With zero logits and target 1, CE(0 + log prior) = -log 0.25 =
    1.386294 (a flipped sign would give 0.287682). The relative cloud sizes m: 0 for the head, 1 for the tail."""
    loss = GCLLoss([3, 1], scale=16.0, noise_mul=0.0)
    assert loss.m.tolist() == [0.0, 1.0]
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(1.3862944, rel=1e-6)


def test_gcl_noise_is_the_absolute_value_of_a_clipped_gaussian_of_variance_one_third():
    """With logits 0 and the tail class's cloud m = 1, the tail logit is -scale * noise_mul * |eps|: recovered
    from the loss of a two-class problem, |eps| has the mean of |N(0, 1/3)| clipped to 1 (0.4409)."""
    loss = GCLLoss([1, 2], scale=1.0, noise_mul=1.0)  # class 0 is the tail (m = 1), class 1 the head (m = 0)
    torch.manual_seed(0)
    samples = []
    for _ in range(4000):
        value = loss(torch.zeros(1, 2), torch.tensor([1])).item()
        # CE for the head target: log(1 + exp(t - h)), t = -|eps| + log p0, h = log p1
        log_p0, log_p1 = math.log(1 / 3), math.log(2 / 3)
        samples.append(-(math.log(math.expm1(value)) - log_p0 + log_p1))
    eps = np.array(samples)
    assert eps.min() >= -1e-6 and eps.max() <= 1 + 1e-6
    assert eps.mean() == pytest.approx(0.4409, abs=0.015)
    assert (eps > 0.99).mean() == pytest.approx(0.0833, abs=0.02)  # P(|N(0, 1/3)| > 1) = 2 (1 - Phi(sqrt 3))


def test_published_defaults_of_ldam_drw():
    """LDAM-DRW as published: largest margin 0.5, scale 30, DRW from epoch 160 with beta 0.9999."""
    loss = LDAMLoss([100, 10])
    assert (loss.margins.max().item(), loss.s, loss.drw_epoch) == (pytest.approx(0.5), 30.0, 160)
    effective = [(1 - 0.9999**n) / (1 - 0.9999) for n in (100, 10)]
    weights = [1 / e for e in effective]
    assert loss.drw_weights.tolist() == pytest.approx([2 * w / sum(weights) for w in weights], rel=1e-6)


def test_build_loss_hands_counts_head_and_parameters_to_the_named_loss():
    counts = [40, 10]
    ce = build_loss("ce", counts, head="linear", cosine_scale=16)
    assert type(ce).__name__ == "CrossEntropy"
    ldam = build_loss("ldam", counts, head="linear", cosine_scale=16, max_margin=0.4, s=10.0)
    assert isinstance(ldam, LDAMLoss) and ldam.s == 10.0
    assert ldam.margins.tolist() == pytest.approx([0.4 * (10 / 40) ** 0.25, 0.4])
    balanced = build_loss("balanced_softmax", counts, head="linear", cosine_scale=16, tau=2.0)
    assert balanced.adjust.tolist() == pytest.approx([2 * math.log(0.8), 2 * math.log(0.2)], rel=1e-6)
    gcl = build_loss("gcl", counts, head="cosine", cosine_scale=16, noise_mul=0.25)
    assert isinstance(gcl, GCLLoss) and (gcl.scale, gcl.noise_mul) == (16, 0.25)
    assert gcl.m.tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError, match=r"^loss gcl needs model.head=cosine$"):
        build_loss("gcl", counts, head="linear", cosine_scale=16)
    with pytest.raises(ConfigError, match=r"choose one of: ce, ldam, balanced_softmax, gcl$"):
        build_loss("focal", counts, head="linear", cosine_scale=16)
