"""Samplers' distributions and every loss against its formula."""

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
