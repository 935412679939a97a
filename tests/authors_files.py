"""Checkpoints written the way the authors' public H2T code writes them (train_stage1.py / train_stage2.py).

Their ``save_checkpoint`` calls ``torch.save`` on ``{"epoch", "state_dict_model", "state_dict_classifier",
["state_dict_block",] "best_acc1", "its_ece"}``: ``best_acc1`` is the meter's average, a tensor on the GPU the
model trained on, ``its_ece`` is ``calibration(...)["expected_calibration_error"] * 100``, a numpy float64,
and the state dicts carry ``module.`` prefixes when the model was wrapped in DataParallel/DDP. The PIF commit's
feature extractor also holds ``conv1d.0..2`` weights that its ``forward`` never uses.

No GPU exists here, so "saved on a GPU" is reproduced by recording the storage location as ``cuda:0`` (what
``torch.save`` writes for a CUDA tensor): loading such a file without ``map_location`` fails on this machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tests.helpers import make_net


@contextlib.contextmanager
def storages_recorded_as_cuda() -> Iterator[None]:
    """While active, ``torch.save`` records every tensor's location as ``cuda:0``."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda _storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def authors_cifar_checkpoint(
    path: Path,
    *,
    prefixed: bool = True,
    with_pif: bool = True,
    with_block: bool = False,
    num_classes: int = 10,
    legacy_format: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Write a CIFAR ResNet-32 file as the authors' scripts save it; returns (backbone state without prefix,
    fc weight, fc bias): what an independent forward pass needs."""
    net = make_net("resnet32", size=16, method="ce", num_classes=num_classes)
    backbone = {k.removeprefix("backbone."): v for k, v in net.state_dict().items() if k.startswith("backbone.")}
    model_state = dict(backbone)
    if with_pif:  # trained nowhere: random, as their never-used Conv1d layers are after initialisation
        generator = torch.Generator().manual_seed(7)
        for index, (cout, cin) in enumerate(((4, 2), (2, 4), (1, 2))):
            model_state[f"conv1d.{index}.weight"] = torch.randn(cout, cin, 1, generator=generator)
            model_state[f"conv1d.{index}.bias"] = torch.randn(cout, generator=generator)
    prefix = "module." if prefixed else ""
    weight, bias = net.head.fc.weight.detach().clone(), net.head.fc.bias.detach().clone()
    payload = {
        "epoch": 200,
        "state_dict_model": {prefix + k: v for k, v in model_state.items()},
        "state_dict_classifier": {prefix + "fc.weight": weight, prefix + "fc.bias": bias},
        "best_acc1": torch.tensor(48.61),
        "its_ece": np.float64(21.375),
    }
    if with_block:
        payload["state_dict_block"] = {prefix + "fc.weight": torch.zeros(8, 8)}
    with storages_recorded_as_cuda():
        torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)
    return backbone, weight, bias


def independent_resnet32(state, fc_weight, fc_bias, x):
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
