"""H2TF: exactly floor(p*C) channels replaced, one subset per batch, inputs untouched unless asked."""

import math

import pytest
import torch

from pih2t_deploy.fusion import fusion_channel_count, h2t_fuse
from tests.helpers import make_net


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.3, 0.5, 1.0])
def test_replaces_floor_p_c_channels_shared_by_the_batch(ratio):
    receiver, donor = torch.randn(5, 64, 4, 4), torch.randn(5, 64, 4, 4)
    fused, channels = h2t_fuse(receiver, donor, ratio, generator=torch.Generator().manual_seed(0))
    assert len(channels) == math.floor(ratio * 64) == fusion_channel_count(64, ratio)
    assert len(set(channels.tolist())) == len(channels)
    changed = ~torch.isclose(fused, receiver).all(dim=(2, 3))  # [B, C]: channel differs from the receiver
    from_donor = torch.isclose(fused, donor).all(dim=(2, 3))
    for sample in range(5):
        assert set(changed[sample].nonzero().flatten().tolist()) == set(channels.tolist())
        assert from_donor[sample, channels].all()


def test_inputs_are_not_mutated_unless_inplace():
    receiver, donor = torch.randn(2, 16, 3, 3), torch.randn(2, 16, 3, 3)
    receiver_copy, donor_copy = receiver.clone(), donor.clone()
    fused, _ = h2t_fuse(receiver, donor, 0.5)
    assert torch.equal(receiver, receiver_copy) and torch.equal(donor, donor_copy)
    assert fused.data_ptr() != receiver.data_ptr()
    fused_inplace, channels = h2t_fuse(receiver, donor, 0.5, inplace=True)
    assert fused_inplace.data_ptr() == receiver.data_ptr()
    assert torch.equal(receiver[:, channels], donor[:, channels])


def test_subset_differs_between_steps_and_is_seeded():
    first = h2t_fuse(torch.zeros(1, 64, 1, 1), torch.ones(1, 64, 1, 1), 0.3, generator=torch.Generator().manual_seed(3))
    again = h2t_fuse(torch.zeros(1, 64, 1, 1), torch.ones(1, 64, 1, 1), 0.3, generator=torch.Generator().manual_seed(3))
    other = h2t_fuse(torch.zeros(1, 64, 1, 1), torch.ones(1, 64, 1, 1), 0.3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first[1], again[1]) and not torch.equal(first[1], other[1])


def test_shape_mismatch_and_bad_ratio_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        h2t_fuse(torch.zeros(2, 4, 2, 2), torch.zeros(3, 4, 2, 2), 0.5)
    with pytest.raises(ValueError, match="ratio"):
        h2t_fuse(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), 1.5)
    with pytest.raises(ValueError, match=r"expected \[B, C, H, W\] feature maps, got 2 dimensions"):
        h2t_fuse(torch.zeros(2, 4), torch.zeros(2, 4), 0.5)


def test_network_fuses_in_feature_space_and_keeps_receiver_batch():
    """The network's donor path equals classify(fuse(features(receiver), features(donor))) for the receivers."""
    net = make_net("digits_net", method="pih2t")
    receiver, donor = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        logits = net(receiver, donor=donor, fusion_ratio=0.5, generator=torch.Generator().manual_seed(0))
        maps = net.features(torch.cat((receiver, donor)))
        fused, _ = h2t_fuse(*maps.split(4), 0.5, generator=torch.Generator().manual_seed(0))
        expected = net.classify(fused)
    assert logits.shape == (4, 7)
    torch.testing.assert_close(logits, expected)


def test_ce_network_refuses_a_donor_batch():
    net = make_net("digits_net", method="ce")
    with pytest.raises(ValueError, match="does not use H2TF"):
        net(torch.randn(2, 1, 8, 8), donor=torch.randn(2, 1, 8, 8), fusion_ratio=0.3)
