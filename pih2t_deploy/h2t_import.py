"""Import of checkpoints written by the authors' public H2T code (``train_stage1.py`` / ``train_stage2.py``).

Those files are ``{"epoch", "state_dict_model", "state_dict_classifier", ["state_dict_block",] "best_acc1",
"its_ece"}``: the feature extractor and the classifier as two state dicts (``module.``-prefixed when saved
from DataParallel/DDP), ``best_acc1`` a tensor (often saved on a GPU) and ``its_ece`` a numpy float64.

What the authors' code computes from such a file is ``classifier(model(x))``: global average pooling of the
backbone's last feature map, then ``fc``. Their PIF commit builds ``conv1d`` weights but ``forward`` returns
the un-fused feature map, so those weights never reached a logit and were never trained: the import leaves
them out (and says so) to reproduce the authors' logits. Stage 1 and stage 2 files have the same layout, so
the stage is recorded as unknown. Places-LT files carry an extra ``state_dict_block`` (a layer this package
does not model) and are refused with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pih2t_deploy.errors import CheckpointError
from pih2t_deploy.models import NetworkConfig, PIH2TNet

logger = logging.getLogger(__name__)

# Backbones the authors' code trains, by the width of the classifier's input: CIFAR ResNet-32 (64 features),
# ImageNet-LT / iNaturalist ResNet-50, ResNeXt-50 and ResNet-152 (2048).
CANDIDATE_ARCHS = {64: ("resnet32",), 2048: ("resnet50", "resnext50_32x4d", "resnet152")}


def is_authors_checkpoint(payload: dict[str, Any]) -> bool:
    """True for the dict layout the authors' H2T training scripts save."""
    return "state_dict_model" in payload


def _strip_module(state: Any) -> dict[str, Any]:
    if not isinstance(state, dict):
        return {}
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _number(value: Any) -> float | None:
    """A recorded score as a float (tensor, numpy scalar or Python number); None when it is none of them."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def import_authors_network(
    file: Path, payload: dict[str, Any], log: Callable[[str], None] = logger.info
) -> tuple[PIH2TNet, dict[str, Any]]:
    """The network (eval mode) whose logits equal what the authors' code computes from ``payload``, and an
    ``imported_from`` record (file name, recorded epoch / best_acc1 / its_ece, ignored PIF weights).

    The architecture is found by loading the weights strictly into each candidate backbone; unused PIF
    weights are dropped with a message through ``log``; every failure is a CheckpointError of one line.
    """
    if payload.get("state_dict_block"):
        raise CheckpointError(
            f"{file} is a Places-LT checkpoint of the authors' code (it has state_dict_block, an extra layer "
            "this package does not model); CIFAR ResNet-32 and ImageNet/iNaturalist ResNet files are supported"
        )
    model_state = _strip_module(payload["state_dict_model"])
    classifier_state = _strip_module(payload.get("state_dict_classifier"))
    weight, bias = classifier_state.get("fc.weight"), classifier_state.get("fc.bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor) or weight.ndim != 2:
        raise CheckpointError(f"{file}: the authors' checkpoint lacks state_dict_classifier fc.weight/fc.bias")
    num_classes, width = (int(n) for n in weight.shape)
    unused = sorted(k for k in model_state if k.startswith("conv1d."))
    if unused:
        log(
            f"{file.name}: ignoring {len(unused)} PIF weights (conv1d.*): the authors' code never applies them "
            "in forward, so the imported model computes the logits their code computes"
        )
    state = {f"backbone.{k}": v for k, v in model_state.items() if not k.startswith("conv1d.")}
    state["head.fc.weight"], state["head.fc.bias"] = weight, bias
    net = _load_first_matching(file, state, width, num_classes)
    recorded = {key: _number(payload.get(key)) for key in ("epoch", "best_acc1", "its_ece")}
    record = {
        "path": file.name,
        "code": "authors' H2T training scripts (train_stage1.py / train_stage2.py)",
        "ignored_pif_weights": unused,
        **{k: v for k, v in recorded.items() if v is not None},
    }
    return net.eval(), record


def _load_first_matching(file: Path, state: dict[str, Any], width: int, num_classes: int) -> PIH2TNet:
    candidates = CANDIDATE_ARCHS.get(width)
    if candidates is None or num_classes < 2:
        raise CheckpointError(
            f"{file}: a classifier over {width} features is not a backbone of the authors' code this package knows "
            "(64: CIFAR ResNet-32, 2048: ImageNet/iNaturalist ResNet-50, ResNeXt-50, ResNet-152)"
        )
    for arch in candidates:
        net = PIH2TNet(NetworkConfig(arch=arch, num_classes=num_classes, method="h2t"))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            continue
        return net
    raise CheckpointError(
        f"{file}: the weights match none of {', '.join(candidates)} (the backbones the authors' code uses with "
        f"{width} features)"
    )
