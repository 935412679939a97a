"""model.pt: round trip, safe loading (no code execution), clear errors, and official H2T import."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from pih2t_deploy.checkpoint import build_meta, load_checkpoint, save_checkpoint
from pih2t_deploy.errors import CheckpointError
from pih2t_deploy.models import NetworkConfig, PIH2TNet
from tests.helpers import make_net


def test_round_trip_keeps_weights_and_meta(tmp_path, digits_net):
    meta = build_meta(digits_net.config, class_names=list("abcdefg"), class_counts=[50, 30, 20, 10, 5, 3, 1])
    path = save_checkpoint(tmp_path / "model.pt", digits_net, meta)
    loaded = load_checkpoint(path)
    assert loaded.meta == meta
    assert loaded.class_names == list("abcdefg")
    assert loaded.preprocessing.input_shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), digits_net(x), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.partial")), "the temporary file must be renamed away"


def test_the_file_loads_with_plain_weights_only(tmp_path, digits_net):
    path = save_checkpoint(tmp_path / "model.pt", digits_net, build_meta(digits_net.config))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "pih2t/1" and set(payload) == {"format", "state_dict", "meta"}


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Exploit.marker}",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    for name, writer in (
        ("zip.pt", lambda p: torch.save({"x": _Exploit()}, p)),
        ("raw.pt", lambda p: p.write_bytes(pickle.dumps({"x": _Exploit()}))),
    ):
        path = tmp_path / name
        writer(path)
        with pytest.raises(CheckpointError, match=r"refused .*arbitrary Python objects"):
            load_checkpoint(path)
        assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable"), (b"hello, world", "not a (readable )?PyTorch checkpoint"), (None, "truncated")],
)
def test_unreadable_files_get_one_clear_error(tmp_path, digits_net, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        save_checkpoint(path, digits_net, build_meta(digits_net.config))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_and_wrong_content(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a pih2t checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_weights_that_do_not_match_the_arch(tmp_path, digits_net):
    meta = build_meta(digits_net.config)
    meta["arch"] = "resnet32"
    meta["in_channels"] = 1
    save_checkpoint(tmp_path / "m.pt", digits_net, meta)
    with pytest.raises(CheckpointError, match="weights do not match resnet32"):
        load_checkpoint(tmp_path / "m.pt")


def _official_checkpoint(path, *, prefixed: bool, with_pif: bool):
    net = make_net("resnet32", size=16, method="pih2t" if with_pif else "ce", num_classes=10)
    backbone = {k.removeprefix("backbone."): v for k, v in net.state_dict().items() if k.startswith("backbone.")}
    if with_pif:
        backbone.update({f"conv1d.{k.removeprefix('pif.phi.')}": v for k, v in net.state_dict().items() if "pif" in k})
    prefix = "module." if prefixed else ""
    torch.save(
        {
            "state_dict_model": {prefix + k: v for k, v in backbone.items()},
            "state_dict_classifier": {
                prefix + "fc.weight": net.head.fc.weight.detach(),
                prefix + "fc.bias": net.head.fc.bias.detach(),
            },
            "epoch": 200,
            "best_acc1": torch.tensor(48.6),
        },
        path,
    )
    return backbone, net.head.fc.weight.detach(), net.head.fc.bias.detach()


def _independent_resnet32(state, fc_weight, fc_bias, x):
    """A functional ResNet-32 forward written from the layer definition, sharing no code with the package."""

    def bn(t, prefix):
        return F.batch_norm(
            t,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            False,
            0.0,
            1e-5,
        )

    out = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    for stage, planes in ((1, 16), (2, 32), (3, 64)):
        for block in range(5):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = F.relu(bn(F.conv2d(out, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            y = bn(F.conv2d(y, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)) if stride == 2 else out
            out = F.relu(y + short)
    return F.linear(out.mean(dim=(2, 3)), fc_weight, fc_bias)


@pytest.mark.parametrize("prefixed", [False, True])
def test_official_h2t_checkpoint_imports_and_matches_independent_forward(tmp_path, prefixed):
    path = tmp_path / "official.pth.tar"
    state, weight, bias = _official_checkpoint(path, prefixed=prefixed, with_pif=False)
    ckpt = load_checkpoint(path, class_counts=[500, 300, 200, 100, 60, 40, 20, 10, 8, 5])
    assert ckpt.meta["arch"] == "resnet32" and ckpt.meta["method"] == "h2t"
    assert ckpt.class_names == [str(i) for i in range(10)]
    assert ckpt.meta["imported_from"]["epoch"] == 200.0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.net(x), _independent_resnet32(state, weight, bias, x), rtol=1e-5, atol=1e-5)


def test_official_checkpoint_with_pif_weights_imports_them(tmp_path):
    path = tmp_path / "official_pif.pth"
    state, _, _ = _official_checkpoint(path, prefixed=True, with_pif=True)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["method"] == "pih2t"
    torch.testing.assert_close(ckpt.net.pif.phi[0].weight, state["conv1d.0.weight"])


def test_official_checkpoint_without_classifier_is_refused(tmp_path):
    torch.save({"state_dict_model": {"conv1.weight": torch.zeros(16, 3, 3, 3)}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="lacks state_dict_classifier"):
        load_checkpoint(tmp_path / "x.pth")


def test_parameter_count_of_resnet32_is_about_0_46m():
    net = PIH2TNet(NetworkConfig(arch="resnet32", num_classes=10, method="ce"))
    assert 0.45e6 < sum(p.numel() for p in net.parameters()) < 0.48e6
