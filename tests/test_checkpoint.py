"""model.pt: round trip, safe loading (no code execution), clear errors, metadata checks, and import of the
files the authors' H2T code saves."""

import pickle

import numpy as np
import pytest
import torch

from pih2t_deploy.checkpoint import build_meta, load_checkpoint, save_checkpoint
from pih2t_deploy.errors import CheckpointError
from pih2t_deploy.models import NetworkConfig, PIH2TNet
from tests.authors_files import authors_cifar_checkpoint, independent_resnet32
from tests.helpers import run_cli


def test_round_trip_keeps_weights_and_meta(tmp_path, digits_net):
    meta = build_meta(digits_net.config, class_names=list("abcdefg"), class_counts=[50, 30, 20, 10, 5, 3, 1])
    path = save_checkpoint(tmp_path / "model.pt", digits_net, meta)
    loaded = load_checkpoint(path)
    assert loaded.meta == meta
    assert loaded.class_names == list("abcdefg")
    assert loaded.class_counts == [50, 30, 20, 10, 5, 3, 1]
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


@pytest.mark.parametrize(("prefixed", "with_pif", "legacy"), [(True, True, False), (False, False, True)])
def test_authors_checkpoint_loads_and_computes_the_authors_logits(tmp_path, prefixed, with_pif, legacy):
    """A file as the authors' scripts save it (GPU tensor best_acc1, numpy float64 its_ece, module. prefixes,
    unused PIF weights): imported logits equal an independent forward pass of their model, which never applies
    the PIF weights; the stage is not claimed."""
    path = tmp_path / "current.pth.tar"
    state, weight, bias = authors_cifar_checkpoint(path, prefixed=prefixed, with_pif=with_pif, legacy_format=legacy)
    with pytest.raises(RuntimeError, match="CUDA"):  # the fixture really records GPU storage
        torch.load(path, weights_only=False)
    notes = []
    ckpt = load_checkpoint(path, class_counts=[500, 300, 200, 100, 60, 40, 20, 10, 8, 5], log=notes.append)
    assert ckpt.meta["arch"] == "resnet32" and ckpt.meta["method"] == "h2t" and ckpt.net.pif is None
    assert ckpt.meta["stage"] is None and ckpt.meta["recipe"] == "authors-h2t-import"
    record = ckpt.meta["imported_from"]
    assert record["epoch"] == 200.0 and record["its_ece"] == 21.375
    assert record["best_acc1"] == pytest.approx(48.61, abs=1e-4)
    assert ckpt.class_names == [str(i) for i in range(10)]
    if with_pif:
        assert record["ignored_pif_weights"] == [f"conv1d.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
        assert notes == [
            "current.pth.tar: ignoring 6 PIF weights (conv1d.*): the authors' code never applies them in forward, "
            "so the imported model computes the logits their code computes"
        ]
    else:
        assert notes == [] and record["ignored_pif_weights"] == []
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.net(x), independent_resnet32(state, weight, bias, x), rtol=1e-5, atol=1e-5)


def test_numpy_2_spelling_of_the_scalar_reconstructor_loads_too(tmp_path):
    """numpy 2 pickles scalars through numpy._core.multiarray; the legacy format keeps the pickle in the clear,
    so the file is rewritten byte for byte as numpy 2 would have written it."""
    path = tmp_path / "np2.pth.tar"
    authors_cifar_checkpoint(path, legacy_format=True)
    data = path.read_bytes()
    assert b"numpy.core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy.core.multiarray\nscalar", b"numpy._core.multiarray\nscalar"))
    assert load_checkpoint(path).meta["imported_from"]["its_ece"] == 21.375


def test_a_places_checkpoint_with_state_dict_block_is_refused_in_one_line(tmp_path):
    path = tmp_path / "places.pth.tar"
    authors_cifar_checkpoint(path, with_block=True)
    with pytest.raises(CheckpointError, match=r"Places-LT checkpoint .*state_dict_block"):
        load_checkpoint(path)


def test_other_python_objects_beside_numpy_scalars_are_still_refused(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    torch.save({"state_dict_model": {}, "its_ece": np.float64(1.0), "x": _Exploit()}, tmp_path / "evil.pth.tar")
    with pytest.raises(CheckpointError, match=r"refused .*arbitrary Python objects \(posix.system\)"):
        load_checkpoint(tmp_path / "evil.pth.tar")
    assert not marker.exists()


def test_official_checkpoint_without_classifier_is_refused(tmp_path):
    torch.save({"state_dict_model": {"conv1.weight": torch.zeros(16, 3, 3, 3)}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="lacks state_dict_classifier"):
        load_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_counts": [1, 2, 3]}, r"class_counts must give 7 counts \(one per class\), found 3"),
        ({"class_counts": [5, 4, 3, -1, 2, 1, 1]}, r"class_counts must be whole numbers >= 0, found -1"),
        ({"class_counts": [5, 4, 3, 2.5, 2, 1, 1]}, r"class_counts must be whole numbers >= 0, found 2.5"),
        ({"class_names": ["a", "b\nc", "d", "e", "f", "g", "h"]}, r"class_names\[1\] is 'b\\nc'"),
        ({"class_names": ["a", "", "d", "e", "f", "g", "h"]}, r"class_names\[1\] is ''"),
        ({"class_names": ["a", "a", "d", "e", "f", "g", "h"]}, r"class_names must be unique; 'a'"),
        ({"class_names": ["a"]}, r"class_names must list 7 names"),
        ({"preprocessing": {"input_size": 8, "resize": 8, "mode": "RGB"}}, "preprocessing gives 3 channels"),
        ({"preprocessing": {"input_size": 8, "resize": 99999, "mode": "L", "mean": [0.5], "std": [0.5]}}, "<= 4096"),
        (
            {"preprocessing": {"input_size": 8, "resize": 8, "mode": "L", "mean": [float("nan")], "std": [0.5]}},
            "finite",
        ),
    ],
)
def test_metadata_edited_by_another_program_is_refused_naming_the_field(tmp_path, digits_net, change, message):
    meta = build_meta(digits_net.config, class_names=list("abcdefg"), class_counts=[50, 30, 20, 10, 5, 3, 1])
    meta.update(change)
    torch.save({"format": "pih2t/1", "state_dict": digits_net.state_dict(), "meta": meta}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "m.pt")


@pytest.mark.integration  # runs the command in a new process
def test_bad_metadata_is_exit_2_with_one_line_from_the_cli(tmp_path, digits_net):
    meta = build_meta(digits_net.config)
    meta["class_counts"] = [1, 2, 3]
    torch.save({"format": "pih2t/1", "state_dict": digits_net.state_dict(), "meta": meta}, tmp_path / "m.pt")
    done = run_cli("export", "--ckpt", str(tmp_path / "m.pt"), "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.pt'} has invalid metadata: class_counts must give 7 counts (one per class), found 3; "
        "re-save it with pih2t-train or fix it"
    ]
    assert not (tmp_path / "out").exists()


def test_parameter_count_of_resnet32_is_about_0_46m():
    net = PIH2TNet(NetworkConfig(arch="resnet32", num_classes=10, method="ce"))
    assert 0.45e6 < sum(p.numel() for p in net.parameters()) < 0.48e6


@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d"])
def test_authors_imagenet_checkpoints_find_their_backbone(tmp_path, arch):
    """ImageNet-LT / iNaturalist files of the authors' code: a torchvision-layout feature extractor and a
    2048-wide classifier; ResNet-50 and ResNeXt-50 share key names and differ in shapes."""
    net = PIH2TNet(NetworkConfig(arch=arch, num_classes=5, method="ce")).eval()
    backbone = {f"module.{k.removeprefix('backbone.')}": v for k, v in net.state_dict().items() if "backbone." in k}
    classifier = {"module.fc.weight": net.head.fc.weight.detach(), "module.fc.bias": net.head.fc.bias.detach()}
    payload = {"epoch": 3, "state_dict_model": backbone, "state_dict_classifier": classifier}
    torch.save({**payload, "best_acc1": torch.tensor(51.2), "its_ece": np.float64(3.5)}, tmp_path / "inet.pth.tar")
    ckpt = load_checkpoint(tmp_path / "inet.pth.tar")
    assert ckpt.meta["arch"] == arch and ckpt.preprocessing.input_size == 224
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.net(x), net(x), rtol=1e-5, atol=1e-5)


def test_an_authors_resnet152_file_is_never_read_as_the_resnet50_its_keys_contain(tmp_path):
    """Every key of a ResNet-50 (and its shape) is also in a ResNet-152: loading tried non-strictly would pick
    ResNet-50, the first candidate, and silently drop 33 blocks. The import must find ResNet-152."""
    torch.manual_seed(0)
    net = PIH2TNet(NetworkConfig(arch="resnet152", num_classes=3, method="ce")).eval()
    backbone = {k.removeprefix("backbone."): v for k, v in net.state_dict().items() if k.startswith("backbone.")}
    resnet50 = PIH2TNet(NetworkConfig(arch="resnet50", num_classes=3, method="ce")).backbone.state_dict()
    assert set(resnet50) < set(backbone)
    classifier = {"fc.weight": net.head.fc.weight.detach(), "fc.bias": net.head.fc.bias.detach()}
    torch.save({"epoch": 1, "state_dict_model": backbone, "state_dict_classifier": classifier}, tmp_path / "r152.pth")
    ckpt = load_checkpoint(tmp_path / "r152.pth")
    assert ckpt.meta["arch"] == "resnet152"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.net(x), net(x), rtol=1e-5, atol=1e-5)
