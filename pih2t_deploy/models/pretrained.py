"""Pretrained backbone weights: ``model.weights=PATH`` (.safetensors, or .pth/.pt/.bin read with
``torch.load(weights_only=True)``; timm and torchvision files, plain or wrapped in ``state_dict`` / ``model``)
or ``model.weights=hf-hub:<repo>`` (huggingface_hub's cache; offline, one line says how to get the file).

Only the backbone is loaded: the file's classifier does not fit the new classes and is left out, and the report
says which backbone tensors were loaded, which are missing and which of the file's were not used. A first
convolution saved for 3 input channels is adapted to a grayscale model (its weights summed over channels).
Loading is refused when the file fills less than ``MIN_LOADED`` of the backbone's parameters: a file of another
architecture would otherwise train from scratch without a word.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pih2t_deploy.checkpoint import read_weights_only
from pih2t_deploy.errors import ConfigError

HF_PREFIX = "hf-hub:"
MIN_LOADED = 0.5
WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
SHOWN = 5  # key names shown per list in the report


@dataclass(frozen=True)
class WeightsReport:
    """What loading a weights file into a backbone did."""

    source: str
    loaded: list[str]
    missing: list[str]
    unused: list[str]
    adapted: list[str]
    loaded_fraction: float  # of the backbone's parameter values

    def describe(self) -> str:
        """One paragraph for the training log."""
        total = len(self.loaded) + len(self.missing)
        parts = [
            f"backbone weights from {self.source}: loaded {len(self.loaded)} of {total} tensors "
            f"({100 * self.loaded_fraction:.0f}% of the parameters)"
        ]
        for label, keys in (("missing (initialised randomly)", self.missing), ("not used", self.unused)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN else ""
                parts.append(f"{label}: {', '.join(keys[:SHOWN])}{more}")
        if self.adapted:
            parts.append(f"adapted to the input channels: {', '.join(self.adapted)}")
        return "; ".join(parts)


def resolve_weights(source: str) -> Path:
    """The local file ``source`` names: a path, or ``hf-hub:<repo>`` downloaded into (or found in)
    huggingface_hub's cache; ConfigError with the way out when it cannot be had."""
    if source.startswith(HF_PREFIX):
        repo = source.removeprefix(HF_PREFIX)
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo, "model.safetensors"))
        except Exception as exc:  # offline, unknown repo, no such file: the same way out for each
            raise ConfigError(
                f"model.weights={source}: cannot get model.safetensors from the Hugging Face Hub "
                f"({type(exc).__name__}); on a machine that is online run `huggingface-cli download {repo} "
                "model.safetensors --local-dir DIR`, copy DIR here and pass model.weights=DIR/model.safetensors"
            ) from None
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"model.weights={source}: no such file; pass a .safetensors, .pth or .pt file")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from ``state_dict``/``model`` and DataParallel's ``module.``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"model.weights={path}: not a readable safetensors file ({exc})") from None
    else:
        state = read_weights_only(path)
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"model.weights={path}: holds no tensors by name (a state dict was expected)")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight [O, I, kh, kw] for ``channels`` inputs: summed for one channel, else
    repeated over the channels and scaled so that the response to a constant image is unchanged."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def load_backbone_weights(backbone: nn.Module, source: str) -> WeightsReport:
    """Load the file ``source`` names into ``backbone`` (its ``body`` for a timm backbone; never ``fc``) and
    report what happened; ConfigError when the file fills less than MIN_LOADED of the parameters."""
    target: nn.Module = getattr(backbone, "body", backbone)
    own = {k: v for k, v in target.state_dict().items() if not k.startswith("fc.")}
    usable: dict[str, torch.Tensor] = {}
    unused, adapted = [], []
    for key, value in read_state_dict(resolve_weights(source)).items():
        expected = own.get(key)
        if expected is None:
            unused.append(key)
        elif value.shape == expected.shape:
            usable[key] = value
        elif value.ndim == 4 and value.shape[0] == expected.shape[0] and value.shape[2:] == expected.shape[2:]:
            usable[key] = adapt_input_conv(value, expected.shape[1])
            adapted.append(key)
        else:
            unused.append(f"{key} (shape {list(value.shape)}, not {list(expected.shape)})")
    parameters = {name for name, _ in target.named_parameters()}
    total = sum(v.numel() for k, v in own.items() if k in parameters)
    filled = sum(v.numel() for k, v in usable.items() if k in parameters)
    fraction = filled / total if total else 0.0
    if fraction < MIN_LOADED:
        seen = ", ".join(unused[:3]) or "nothing"
        raise ConfigError(
            f"model.weights={source} fills only {100 * fraction:.0f}% of the backbone's parameters (its keys begin "
            f"{seen}): is it a file of the same architecture (model.arch)?"
        )
    target.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable]
    return WeightsReport(source, sorted(usable), missing, unused, adapted, fraction)
