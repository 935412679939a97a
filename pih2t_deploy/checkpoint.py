"""The ``model.pt`` format: save, load (weights only, never arbitrary unpickling) and official-H2T import.

A checkpoint is ``{"format": "pih2t/1", "state_dict": {...}, "meta": {...}}`` written with ``torch.save``
to a temporary name and renamed when complete. ``meta`` holds the network settings (arch, num_classes,
in_channels, method, head, cosine_scale, lws, pif_activation), class_names, class_counts, preprocessing,
stage, recipe and versions.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import platform
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pih2t_deploy import __version__
from pih2t_deploy.atomic import atomic_file
from pih2t_deploy.data.preprocessing import Preprocessing, default_preprocessing
from pih2t_deploy.errors import CheckpointError, ConfigError
from pih2t_deploy.models import NetworkConfig, PIH2TNet

FORMAT = "pih2t/1"
_NETWORK_KEYS = tuple(f.name for f in fields(NetworkConfig))


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network (eval mode, CPU) and its metadata."""

    net: PIH2TNet
    meta: dict[str, Any]

    @property
    def preprocessing(self) -> Preprocessing:
        """The inference preprocessing stored with the weights."""
        return Preprocessing.from_dict(self.meta["preprocessing"])

    @property
    def class_names(self) -> list[str]:
        """Class names in index order."""
        return list(self.meta["class_names"])

    @property
    def class_counts(self) -> list[int] | None:
        """Training images per class, when known."""
        counts = self.meta.get("class_counts")
        return list(counts) if counts is not None else None


def versions() -> dict[str, str]:
    """Versions of the software that makes an artifact."""
    return {"pih2t_deploy": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def build_meta(
    config: NetworkConfig,
    *,
    class_names: Sequence[str] | None = None,
    class_counts: Sequence[int] | None = None,
    preprocessing: Preprocessing | None = None,
    stage: int = 2,
    recipe: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete, validated meta dict for ``config``; names default to the class indices."""
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(config.num_classes)]
    if len(names) != config.num_classes:
        raise ConfigError(f"{len(names)} class names given for {config.num_classes} classes")
    if class_counts is not None and len(class_counts) != config.num_classes:
        raise ConfigError(f"{len(class_counts)} class counts given for {config.num_classes} classes")
    prep = preprocessing or default_preprocessing(config.arch, config.in_channels)
    if prep.channels != config.in_channels:
        raise ConfigError(f"preprocessing gives {prep.channels} channels, the network takes {config.in_channels}")
    meta = config.to_dict()
    meta.update(
        class_names=names,
        class_counts=[int(c) for c in class_counts] if class_counts is not None else None,
        preprocessing=prep.to_dict(),
        stage=int(stage),
        recipe=recipe,
        versions=versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    if extra:
        meta.update(extra)
    return meta


def network_config(meta: dict[str, Any]) -> NetworkConfig:
    """The NetworkConfig stored in ``meta``."""
    return NetworkConfig.from_dict({k: meta[k] for k in _NETWORK_KEYS if k in meta})


def save_checkpoint(path: str | os.PathLike[str], net: PIH2TNet, meta: dict[str, Any]) -> Path:
    """Write ``model.pt`` atomically (temporary name, then rename); returns the path."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, tmp)
    return Path(path)


def read_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear CheckpointError line."""
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint {file} does not exist; pass the path of a model.pt")
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} is not a file")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found and not _starts_like_pickle(file):
            raise CheckpointError(f"{file} is not a PyTorch checkpoint (unreadable pickle data)") from None
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"refused {file}: it needs unpickling of arbitrary Python objects{what}, which could run code; "
            "re-save it as a dict of tensors and plain values"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        raise CheckpointError(f"{file} is not a readable PyTorch checkpoint (truncated or corrupt?)") from None


def _starts_like_pickle(file: Path) -> bool:
    with file.open("rb") as handle:
        return handle.read(1) == b"\x80"


def _load_pih2t(file: Path, payload: dict[str, Any]) -> Checkpoint:
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} has checkpoint format {payload.get('format')!r}; this package reads {FORMAT}")
    meta, state = payload.get("meta"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{file} lacks its 'meta' or 'state_dict' entry")
    try:
        config = network_config(meta)
        Preprocessing.from_dict(meta["preprocessing"])
        if len(meta["class_names"]) != config.num_classes:
            raise ConfigError("class_names does not match num_classes")
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file} has invalid metadata: {exc}") from None
    net = PIH2TNet(config)
    _load_state(net, state, file)
    return Checkpoint(net.eval(), meta)


def _load_state(net: PIH2TNet, state: dict[str, Any], file: Path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(f"{file}: weights do not match {net.config.arch}: {first}") from None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    class_counts: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> Checkpoint:
    """Load a ``pih2t/1`` checkpoint, or import an official H2T-code CIFAR checkpoint (ResNet-32).

    ``class_counts`` / ``class_names`` fill in what an official checkpoint lacks (and are ignored for ours).
    Every failure is a CheckpointError with one line; nothing from the file is ever executed.
    """
    file = Path(path)
    payload = read_weights_only(file)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{file} is not a checkpoint dict (found {type(payload).__name__})")
    if "format" in payload:
        return _load_pih2t(file, payload)
    if "state_dict_model" in payload:
        return import_official_h2t(file, payload, class_counts=class_counts, class_names=class_names)
    raise CheckpointError(
        f"{file} is neither a pih2t checkpoint nor an official H2T checkpoint "
        "(expected keys 'format' or 'state_dict_model')"
    )


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def import_official_h2t(
    file: Path,
    payload: dict[str, Any],
    *,
    class_counts: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> Checkpoint:
    """Convert the authors' CIFAR checkpoint (``state_dict_model`` + ``state_dict_classifier``) to ours.

    The feature extractor is a ResNet-32 (keys conv1, bn1, layer1..3, optionally ``module.``-prefixed, and
    PIF weights ``conv1d.0..2`` when present); the classifier holds ``fc.weight`` and ``fc.bias``.
    """
    model_state = _strip_module(payload["state_dict_model"])
    classifier_state = _strip_module(payload.get("state_dict_classifier") or {})
    if "fc.weight" not in classifier_state or "fc.bias" not in classifier_state:
        raise CheckpointError(f"{file}: official checkpoint lacks state_dict_classifier fc.weight/fc.bias")
    weight = classifier_state["fc.weight"]
    num_classes, width = weight.shape
    if width != 64 or "conv1.weight" not in model_state:
        raise CheckpointError(f"{file}: official checkpoint is not a ResNet-32 (64 features, conv1 present)")
    has_pif = any(k.startswith("conv1d.") for k in model_state)
    config = NetworkConfig(arch="resnet32", num_classes=int(num_classes), method="pih2t" if has_pif else "h2t")
    state = {f"backbone.{k}": v for k, v in model_state.items() if not k.startswith("conv1d.")}
    state.update({f"pif.phi.{k.removeprefix('conv1d.')}": v for k, v in model_state.items() if k.startswith("conv1d.")})
    state["head.fc.weight"], state["head.fc.bias"] = weight, classifier_state["fc.bias"]
    net = PIH2TNet(config)
    _load_state(net, state, file)
    scalars = {
        k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
        for k, v in payload.items()
        if k in ("epoch", "best_acc1")
    }
    meta = build_meta(
        config,
        class_names=class_names,
        class_counts=class_counts,
        stage=2,
        recipe="official-h2t-import",
        extra={"imported_from": {"path": file.name, **{k: float(v) for k, v in scalars.items()}}},
    )
    return Checkpoint(net.eval(), meta)
