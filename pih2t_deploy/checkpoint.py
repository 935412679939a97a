"""The ``model.pt`` format: save, load (weights only, never arbitrary unpickling) and import of the authors' files.

A checkpoint is ``{"format": "pih2t/1", "state_dict": {...}, "meta": {...}}`` written with ``torch.save``
to a temporary name and renamed when complete. ``meta`` holds the network settings (arch, num_classes,
in_channels, method, head, cosine_scale, lws, pif_activation), class_names, class_counts, preprocessing,
stage, recipe and versions. Files saved by the authors' H2T code are imported by ``h2t_import``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import pickle
import platform
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pih2t_deploy import __version__
from pih2t_deploy.atomic import atomic_file
from pih2t_deploy.data.preprocessing import Preprocessing, default_preprocessing
from pih2t_deploy.errors import CheckpointError, ConfigError
from pih2t_deploy.h2t_import import import_authors_network, is_authors_checkpoint
from pih2t_deploy.models import NetworkConfig, PIH2TNet, get_arch

logger = logging.getLogger(__name__)

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
    stage: int | None = 2,
    recipe: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete, validated meta dict for ``config`` (``validate_meta``); names default to the class indices;
    ``stage`` None means the stage is not known (an imported file that does not record it)."""
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(config.num_classes)]
    prep = preprocessing or default_preprocessing(get_arch(config.arch).default_input_size, config.in_channels)
    meta = config.to_dict()
    meta.update(
        class_names=names,
        class_counts=[int(c) for c in class_counts] if class_counts is not None else None,
        preprocessing=prep.to_dict(),
        stage=int(stage) if stage is not None else None,
        recipe=recipe,
        versions=versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    if extra:
        meta.update(extra)
    validate_meta(meta)
    return meta


def validate_meta(meta: dict[str, Any]) -> NetworkConfig:
    """Check everything later tools rely on; a ConfigError naming the field otherwise. Returns the network
    settings. Class names: one per class, non-empty, unique, one line each. Class counts (when present): one
    whole number >= 0 per class. Preprocessing: a valid ``Preprocessing`` with the network's channel count."""
    try:
        config = network_config(meta)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"network settings are incomplete ({exc})") from None
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != config.num_classes:
        found = len(names) if isinstance(names, list) else type(names).__name__
        raise ConfigError(f"class_names must list {config.num_classes} names (one per class), found {found}")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
            raise ConfigError(f"class_names[{index}] is {name!r}: each name must be non-empty text on one line")
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"class_names must be unique; {duplicate!r} appears more than once")
    counts = meta.get("class_counts")
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != config.num_classes:
            found = len(counts) if isinstance(counts, list) else type(counts).__name__
            raise ConfigError(f"class_counts must give {config.num_classes} counts (one per class), found {found}")
        bad = [c for c in counts if isinstance(c, bool) or not isinstance(c, int) or c < 0]
        if bad:
            raise ConfigError(f"class_counts must be whole numbers >= 0, found {bad[0]!r}")
    try:
        prep = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"preprocessing is missing or malformed ({exc})") from None
    if prep.channels != config.in_channels:
        raise ConfigError(f"preprocessing gives {prep.channels} channels, the network takes {config.in_channels}")
    return config


def network_config(meta: dict[str, Any]) -> NetworkConfig:
    """The NetworkConfig stored in ``meta``."""
    return NetworkConfig.from_dict({k: meta[k] for k in _NETWORK_KEYS if k in meta})


def save_checkpoint(path: str | os.PathLike[str], net: PIH2TNet, meta: dict[str, Any]) -> Path:
    """Write ``model.pt`` atomically (temporary name, then rename); returns the path."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, tmp)
    return Path(path)


def _numpy_scalar_globals() -> list[Any]:
    """What a pickled numpy scalar (e.g. the ``np.float64`` ECE the authors' code saves) needs, and nothing
    more: the scalar reconstructor under its numpy 1 and numpy 2 names, ``numpy.dtype`` and the numeric dtype
    classes. None of them can call arbitrary code: they rebuild a number from its bytes."""
    scalar = np.core.multiarray.scalar  # type: ignore[attr-defined]  # numpy 1's path, not in its stubs
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdg"]
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtype_classes,
    ]


NUMPY_SCALAR_GLOBALS = _numpy_scalar_globals()


def read_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear CheckpointError line.

    Tensors saved on a GPU are mapped to the CPU; numpy scalars are allowed (``NUMPY_SCALAR_GLOBALS``);
    any other Python object in the pickle is refused without being built.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint {file} does not exist; pass the path of a model.pt")
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} is not a file")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
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
        config = validate_meta(meta)
    except ConfigError as exc:
        raise CheckpointError(f"{file} has invalid metadata: {exc}; re-save it with pih2t-train or fix it") from None
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
    log: Callable[[str], None] = logger.info,
) -> Checkpoint:
    """Load a ``pih2t/1`` checkpoint, or import a file saved by the authors' H2T code (``h2t_import``).

    ``class_counts`` / ``class_names`` fill in what the authors' files lack (and are ignored for ours);
    ``log`` receives one-line notes about the import. Every failure is a CheckpointError with one line;
    nothing from the file is ever executed.
    """
    file = Path(path)
    payload = read_weights_only(file)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{file} is not a checkpoint dict (found {type(payload).__name__})")
    if "format" in payload:
        return _load_pih2t(file, payload)
    if is_authors_checkpoint(payload):
        net, record = import_authors_network(file, payload, log)
        meta = build_meta(
            net.config,
            class_names=class_names,
            class_counts=class_counts,
            stage=None,
            recipe="authors-h2t-import",
            extra={"imported_from": record},
        )
        return Checkpoint(net, meta)
    raise CheckpointError(
        f"{file} is neither a pih2t checkpoint nor a file saved by the authors' H2T code "
        "(expected keys 'format', or 'state_dict_model' as the authors' H2T code saves)"
    )
