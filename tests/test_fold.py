"""The fold: exact parity, no PIF/LWS left, strict loading into torchvision, and the self-check."""

import copy
import itertools

import pytest
import torch
import torchvision
from torch import nn

import pih2t_deploy.fold as fold_module
from pih2t_deploy.errors import ConfigError, VerificationError
from pih2t_deploy.fold import PIFClassifier, compare_logits, fold
from pih2t_deploy.models import PIH2TNet
from pih2t_deploy.models.heads import CosineHead, LinearHead
from pih2t_deploy.models.pif import PIF
from tests.helpers import make_net

SMALL = {"digits_net": 8, "resnet32": 16, "resnet18": 32, "resnet50": 64}
COUNTS = [100, 60, 30, 12, 6, 3, 1]
LOG_PRIOR = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))  # log(n_k / n), by hand


def _check(arch, head, method, tau, fuse_bn):
    """Parity in float64 (the fold's algebra) and in float32 (what is deployed) on the same inputs.

    Without BN fusion both must agree within 1e-5 absolute. BN fusion stores rescaled weights in float32,
    which keeps relative, not absolute, precision: there the bound is 1e-5 of the largest logit in float64
    and 1e-4 of it in float32 (where the operation order changes through every layer as well).
    """
    size = SMALL[arch]
    net = make_net(arch, size=size, method=method, head=head, lws=True)
    shape = (net.config.in_channels, size, size)
    folded, report = fold(net, input_shape=shape, logit_adjust_tau=tau, class_counts=COUNTS, fuse_bn=fuse_bn)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(7))
    adjustment = tau * LOG_PRIOR
    with torch.no_grad():
        expected = net(x).double() - adjustment
        fp32_diff = (expected - folded(x).double()).abs().max()
        fp64_diff = copy.deepcopy(net).double()(x.double()) - adjustment - copy.deepcopy(folded).double()(x.double())
    scale = max(1.0, float(expected.abs().max())) if fuse_bn else 1.0
    assert fp64_diff.abs().max() <= 1e-5 * scale
    assert fp32_diff <= 1e-5 * scale * (10 if fuse_bn else 1)
    assert report.max_abs_diff <= report.tolerance
    assert report.pif_folded == (method == "pih2t")
    assert (report.bn_fused > 0) == fuse_bn
    return folded


@pytest.mark.parametrize(
    ("arch", "head", "method", "tau", "fuse_bn"),
    [
        (arch, head, method, tau, fuse_bn)
        for arch, head, method, tau, fuse_bn in itertools.product(
            ["digits_net", "resnet32", "resnet18"], ["linear", "cosine"], ["pih2t", "ce"], [0.0, 1.0], [False, True]
        )
    ]
    + [("resnet50", "linear", "pih2t", 1.0, True), ("resnet50", "cosine", "pih2t", 0.0, False)]
    + [("digits_net", "linear", "pih2t", 0.37, False), ("digits_net", "cosine", "pih2t", 2.5, True)],
)
def test_fold_parity_within_1e_5(arch, head, method, tau, fuse_bn):
    folded = _check(arch, head, method, tau, fuse_bn)
    kinds = {type(m) for m in folded.modules()}
    assert not kinds & {PIF, LinearHead, CosineHead, PIFClassifier}
    assert not any("lws" in name for name, _ in folded.named_parameters())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "resnet152"])
def test_folded_state_dict_loads_strictly_into_torchvision(arch):
    net = make_net(arch, size=32, method="pih2t", lws=True) if arch != "resnet152" else None
    if net is None:  # resnet152 is slow to calibrate: a plain random one is enough for the key check
        from pih2t_deploy.models import NetworkConfig, PIH2TNet

        net = PIH2TNet(NetworkConfig(arch=arch, num_classes=7, method="pih2t", lws=True)).eval()
    folded, _ = fold(net, input_shape=(3, 32, 32), logit_adjust_tau=0.5, class_counts=COUNTS)
    vanilla = getattr(torchvision.models, arch)(num_classes=7).eval()
    vanilla.load_state_dict(folded.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vanilla(x), folded(x))
    assert type(folded).forward is torchvision.models.ResNet.forward


def test_pif_with_activation_stays_in_graph_and_is_exact():
    net = make_net("digits_net", method="pih2t", pif_activation="relu")
    folded, report = fold(net, input_shape=(1, 8, 8), tolerance=1e-5)
    assert report.pif_kept_in_graph and not report.pif_folded
    assert isinstance(folded, PIFClassifier)


def test_a_corrupted_fold_is_refused(monkeypatch):
    """Replacing the PIF matrix by the identity makes the fold wrong; fold() must refuse to return it."""
    net = make_net("digits_net", method="pih2t")
    monkeypatch.setattr(
        fold_module,
        "_pif_matrix",
        lambda pif, c: (torch.eye(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)),
    )
    with pytest.raises(VerificationError, match="not exact"):
        fold(net, input_shape=(1, 8, 8))


def test_fold_does_not_modify_the_network():
    """Neither the weights nor the mode: a network in training mode is still training after its fold."""
    net = make_net("digits_net", method="pih2t", lws=True).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fold(net, input_shape=(1, 8, 8), fuse_bn=True, logit_adjust_tau=1.0, class_counts=COUNTS)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.training for m in net.modules())


def test_logit_adjustment_needs_counts():
    net = make_net("digits_net", method="pih2t")
    with pytest.raises(ConfigError, match="class counts"):
        fold(net, input_shape=(1, 8, 8), logit_adjust_tau=1.0)
    with pytest.raises(ConfigError, match="positive"):
        fold(net, input_shape=(1, 8, 8), logit_adjust_tau=1.0, class_counts=[0, 1, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("arch", ["resnet18", "resnet32"])
def test_every_batchnorm_is_fused_including_downsample_branches(arch):
    """Every BatchNorm2d of the backbone (after a named conv, or after the conv of a downsample Sequential) is
    fused and counted, none is left, and with non-trivial statistics the fused model still matches."""
    net = make_net(arch, size=SMALL[arch], method="ce", head="linear", lws=False)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    shape = (net.config.in_channels, SMALL[arch], SMALL[arch])
    folded, report = fold(net, input_shape=shape, fuse_bn=True)
    assert report.bn_fused == batchnorms and batchnorms > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    downsample = [m for m in folded.modules() if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d)]
    assert len(downsample) == (3 if arch == "resnet18" else 0)  # torchvision's conv + BN shortcuts
    assert all(isinstance(m[1], nn.Identity) for m in downsample)


def test_the_fold_report_is_json_and_keeps_the_adjustment_out():
    import json

    net = make_net("digits_net", size=8, method="pih2t", head="linear", lws=True)
    _, report = fold(net, input_shape=(1, 8, 8), logit_adjust_tau=1.0, class_counts=COUNTS)
    data = json.loads(json.dumps(report.to_dict()))
    assert "adjustment" not in data and data["logit_adjust_tau"] == 1.0 and data["pif_folded"] is True
    assert set(data) == {
        "max_abs_diff", "max_rel_diff", "max_abs_diff_fp32", "tolerance", "pif_folded", "pif_kept_in_graph",
        "bn_fused", "logit_adjust_tau", "head", "parameters_before", "parameters_after", "temperature",
    }  # fmt: skip
    assert data["temperature"] == 1.0
    assert torch.allclose(report.adjustment, LOG_PRIOR)  # tau 1: the log prior, kept for the export's reference
    assert data["head"] == "linear"
    # the fold removes exactly PIF's and LWS's parameters; the rest is the plain network's
    assert data["parameters_before"] == sum(p.numel() for p in net.parameters())
    removed = sum(p.numel() for p in net.pif.parameters()) + net.head.lws.numel()
    assert data["parameters_before"] - data["parameters_after"] == removed > 0


def test_the_report_measures_the_fold_on_its_seeded_inputs():
    """Both differences in the report are those of ``compare_logits`` on the seed and batch fold was given."""
    net = make_net("digits_net", size=8, method="pih2t", head="linear", lws=True)
    shape = (1, 8, 8)
    folded, report = fold(net, input_shape=shape, logit_adjust_tau=1.0, class_counts=COUNTS, seed=3, check_batch=2)
    in_float64 = compare_logits(net, folded, shape, report.adjustment, 2, 3, torch.float64)
    assert (report.max_abs_diff, report.max_rel_diff) == in_float64
    assert report.max_abs_diff_fp32 == compare_logits(net, folded, shape, report.adjustment, 2, 3)[0]
    assert report.max_abs_diff_fp32 != compare_logits(net, folded, shape, report.adjustment, 2, 0)[0]


def _scaled_head(factor: float) -> PIH2TNet:
    net = make_net("digits_net", size=8, method="pih2t", head="linear", lws=True)
    with torch.no_grad():
        net.head.fc.weight.mul_(factor)
        net.head.fc.bias.mul_(factor)
    return net


def test_the_tolerance_is_absolute_for_logits_up_to_one_and_relative_above():
    """The fold is refused when its float64 difference exceeds tolerance * max(1, largest |logit|), and returned
    when it equals it: the first fold measures the difference, the next ones are given tolerances around it."""
    small = _scaled_head(1e-3)
    _, report = fold(small, input_shape=(1, 8, 8))
    largest = report.max_abs_diff / report.max_rel_diff
    assert largest < 1 and report.max_abs_diff > 0  # float32 storage of the folded weights rounds
    fold(small, input_shape=(1, 8, 8), tolerance=report.max_abs_diff)  # exactly at the bound: returned
    with pytest.raises(VerificationError, match="exceeds tolerance"):
        fold(small, input_shape=(1, 8, 8), tolerance=report.max_abs_diff / 1.5)

    large = _scaled_head(100.0)
    _, report = fold(large, input_shape=(1, 8, 8))
    assert report.max_abs_diff / report.max_rel_diff > 2
    fold(large, input_shape=(1, 8, 8), tolerance=report.max_rel_diff * 1.1)
    with pytest.raises(VerificationError, match="exceeds tolerance"):
        fold(large, input_shape=(1, 8, 8), tolerance=report.max_rel_diff / 1.1)


def test_a_head_it_does_not_know_is_refused_by_name():
    class MysteryHead(nn.Module):
        lws = None

    net = make_net("digits_net", size=8, method="ce", head="linear")
    net.head = MysteryHead()
    with pytest.raises(TypeError, match=r"^cannot fold head of type MysteryHead$"):
        fold(net, input_shape=(1, 8, 8))


@pytest.mark.parametrize("where", ["plain network", "trained backbone"])
def test_a_backbone_that_does_not_match_its_architecture_is_refused(monkeypatch, where):
    """A weight the plain network lacks (or one it has that the backbone lacks) must stop the fold."""
    net = make_net("digits_net", size=8, method="ce", head="linear")
    if where == "trained backbone":
        net.backbone.extra = nn.Linear(2, 2)
    else:
        create_arch = fold_module.create_arch

        def with_an_extra_layer(*args):
            model = create_arch(*args)
            model.extra = nn.Linear(2, 2)
            return model

        monkeypatch.setattr(fold_module, "create_arch", with_an_extra_layer)
    with pytest.raises(RuntimeError, match=r"backbone weights do not match digits_net: .*extra\.weight"):
        fold(net, input_shape=(1, 8, 8))


def test_only_batchnorms_after_a_known_convolution_are_fused():
    """convX/bnX pairs and neighbours in a Sequential are fused; a BatchNorm with another name, in a ModuleList
    (not run in order) or first in a Sequential is left alone, and those after it are still fused."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
            self.norm = nn.BatchNorm2d(4)
            self.pair = nn.ModuleList([nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)])
            self.seq = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

    block = Block()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(4, generator=generator))
                module.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
    block.eval()
    original = copy.deepcopy(block)
    assert fold_module.fuse_conv_bn(block) == 2
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.seq[2], nn.Identity)
    assert all(isinstance(m, nn.BatchNorm2d) for m in (block.norm, block.pair[1], block.seq[0]))
    x = torch.randn(2, 4, 5, 5, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(block.seq(x), original.seq(x))
        y = torch.randn(2, 2, 7, 7, generator=generator)
        torch.testing.assert_close(block.bn1(block.conv1(y)), original.bn1(original.conv1(y)))


@pytest.mark.parametrize(("method", "pre"), [("ce", nn.Identity), ("pih2t", nn.Linear)])
def test_a_cosine_head_without_pif_gets_no_extra_layer(method, pre):
    from pih2t_deploy.models.heads import CosineClassifier

    net = make_net("digits_net", size=8, method=method, head="cosine", lws=True)
    folded, _ = fold(net, input_shape=(1, 8, 8))
    assert isinstance(folded.fc, CosineClassifier) and type(folded.fc.pre) is pre
