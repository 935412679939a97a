"""timm CNNs as PI-H2T backbones (model.arch=timm/<name>) and pretrained weights (model.weights): the fold
checked against an independent float64 computation for heads with and without a norm after pooling, heads that
cannot fold refused, weight files loaded with a report, and a small timm ResNet trained from a saved weights
file end to end (train, fold, ONNX parity, serve one image)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pih2t_deploy.data.longtail import log_prior
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.fold import fold
from pih2t_deploy.models import NetworkConfig, PIH2TNet, get_arch
from pih2t_deploy.models.pretrained import load_backbone_weights
from tests.helpers import run_cli

COUNTS = [50, 20, 10, 5, 2]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's resnet10t was trained with


def _trained_looking(arch: str, a_sign: float, in_channels: int = 3) -> PIH2TNet:
    """A PI-H2T net on ``arch`` with a PIF whose slope a has the sign ``a_sign`` and LWS scales away from 1."""
    torch.manual_seed(0)
    net = PIH2TNet(NetworkConfig(arch=arch, num_classes=len(COUNTS), in_channels=in_channels, lws=True))
    with torch.no_grad():
        # a is linear in the last layer's weights: scale them to the wanted sign (and away from the default)
        net.pif.phi[-1].weight.mul_(a_sign * float(np.sign(net.pif.affine_coefficients().a)) * 1.7)
        net.head.lws.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize(
    ("arch", "a_sign", "norm_after_pool"),
    [
        ("timm/resnet10t", 1.0, False),
        ("timm/efficientnet_b0", -1.0, False),
        ("timm/convnext_atto", 1.0, True),
        ("timm/convnext_atto", -1.0, True),
    ],
)
def test_the_fold_equals_the_network_minus_the_logit_adjustment(arch, a_sign, norm_after_pool):
    net = _trained_looking(arch, a_sign)
    assert np.sign(net.pif.affine_coefficients().a) == a_sign
    plain, report = fold(net, input_shape=(3, 32, 32), logit_adjust_tau=1.5, class_counts=COUNTS)
    assert report.pif_folded and (plain.pooled_norm is not None) == norm_after_pool
    assert not any(isinstance(m, type(net.pif)) for m in plain.modules()), "no PIF left in the plain model"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = net.double()(x) - 1.5 * torch.from_numpy(log_prior(COUNTS))
        actual = plain.double()(x)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("timm/vit_tiny_patch16_224", "a token head?"),
        ("timm/mobilenetv3_small_050", "does more than global average pooling (+ a norm) before the classifier"),
        ("timm/resnet_which_does_not_exist", "unknown timm model 'resnet_which_does_not_exist'"),
    ],
)
def test_heads_that_cannot_fold_exactly_are_refused_with_the_reason(arch, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        get_arch(arch)


def test_weights_load_with_a_report_and_a_grayscale_stem_is_adapted(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}  # DataParallel, wrapped
    torch.save(wrapped, tmp_path / "wrapped.pth")
    net = PIH2TNet(NetworkConfig(arch="timm/resnet10t", num_classes=5, in_channels=1))
    report = load_backbone_weights(net.backbone, str(tmp_path / "wrapped.pth"))
    assert report.loaded_fraction == 1.0 and report.missing == []
    assert report.unused == ["fc.weight", "fc.bias"] and report.adapted == ["conv1.0.weight"]
    stem = net.backbone.body.conv1[0].weight
    assert torch.equal(stem, source.conv1[0].weight.sum(dim=1, keepdim=True))
    assert torch.equal(net.backbone.body.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert "loaded 84 of 84 tensors (100% of the parameters); not used: fc.weight, fc.bias" in report.describe()


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_file(timm.create_model("efficientnet_b0").state_dict(), str(tmp_path / "other.safetensors"))
    net = PIH2TNet(NetworkConfig(arch="timm/resnet10t", num_classes=5))
    with pytest.raises(ConfigError, match=r"fills only \d+% of the backbone's parameters .*same architecture"):
        load_backbone_weights(net.backbone, str(tmp_path / "other.safetensors"))


def test_hub_weights_offline_get_one_line_saying_how_to_download_elsewhere(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read once, when the library loads
    net = PIH2TNet(NetworkConfig(arch="timm/resnet10t", num_classes=5))
    with pytest.raises(ConfigError, match=r"huggingface-cli download timm/resnet10t.a1_in1k model.safetensors"):
        load_backbone_weights(net.backbone, "hf-hub:timm/resnet10t.a1_in1k")


def test_a_timm_resnet_at_32_px_trains_from_a_weights_file_folds_exports_and_serves(tmp_path):
    """Digits (8x8) upscaled to 32 px: the final map of resnet10t is 1x1. Two short stages, then ONNX (the
    export verifies parity itself) and one image through pih2t-serve against onnxruntime directly."""
    from pih2t_deploy.data.digits_folder import write_digits_folder
    from pih2t_deploy.runtime import load_classifier
    from pih2t_deploy.serving.process import free_port, start_rest_server

    write_digits_folder(tmp_path / "digits")
    save_file(timm.create_model("resnet10t").state_dict(), str(tmp_path / "pretrained.safetensors"))
    trained = run_cli(
        "train", "--recipe", "training/digits-folder.yaml", "--output", str(tmp_path / "run"),
        f"data.root={tmp_path / 'digits'}", "model.arch=timm/resnet10t",
        f"model.weights={tmp_path / 'pretrained.safetensors'}", "data.input_size=32", "data.resize=32",
        "data.max_upscale=4", "stage1.epochs=1", "stage2.epochs=1", "runtime.progress=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "loaded 84 of 84 tensors" in trained.stdout + trained.stderr
    exported = run_cli("export", "--ckpt", str(tmp_path / "run" / "model.pt"), "--output", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "operator counts identical to the vanilla timm/resnet10t" in exported.stdout + exported.stderr
    image = (tmp_path / "digits" / "test" / "three" / "three_0000.png").read_bytes()
    classifier = load_classifier(tmp_path / "export")
    prep = classifier.info.preprocessing  # resnet10t's pretrained configuration, for grayscale: channel means
    assert prep.interpolation == "bicubic" and prep.mode == "L"
    assert prep.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and prep.std == pytest.approx((sum(IMAGENET_STD) / 3,))
    expected = classifier.probabilities(classifier.predict(classifier.prepare([Image.open(io.BytesIO(image))])))[0]
    port = free_port()
    server = start_rest_server(tmp_path / "export", port)
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", files={"file": ("3.png", image)}).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    top = answer["results"][0]["predictions"][0]
    assert top["index"] == int(expected.argmax()) and top["score"] == pytest.approx(float(expected.max()), abs=1e-5)
