"""Recipes: YAML files shipped in the package (``pih2t_deploy/recipes/<name>.yaml``), with ``key=value`` overrides.

A recipe may name a ``base`` recipe whose settings it extends. Any field can be overridden on the command
line with a dotted key, e.g. ``stage1.epochs=5`` or ``data.imbalance_factor=100``; values are parsed as YAML.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from pih2t_deploy.data.sources import DataConfig
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.settings import FORBID_UNKNOWN_KEYS, validate_settings
from pih2t_deploy.training.losses import LossName, loss_parameters, require_head_for_loss
from pih2t_deploy.training.tracking import TrackerName

RECIPES = resources.files("pih2t_deploy") / "recipes"

NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
SamplerKind = Literal["instance", "class", "sqrt"]


def _as_list(value: Any) -> Any:
    """``runtime.tracking=mlflow`` (one name, or names separated by commas) as a list."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("choose auto, cpu, cuda or cuda:N")
    return value


@dataclass(frozen=True)
class ModelSettings:
    """The network apart from num_classes / in_channels (which the data decides) and the method."""

    __pydantic_config__ = FORBID_UNKNOWN_KEYS

    arch: str = "digits_net"
    head: Literal["linear", "cosine"] = "linear"
    cosine_scale: PositiveFloat = 16.0
    lws: bool = False
    pif_activation: Literal["relu", "gelu", "silu", "tanh"] | None = None
    # pretrained backbone: a .safetensors/.pth/.pt file or hf-hub:<repo> (models/pretrained.py)
    weights: str | None = None


@dataclass(frozen=True)
class LossSettings:
    """The base method's loss and its parameters: ``params`` in both stages, ``stage2_params`` replacing some of
    them in stage 2 (GCL's published stage 2 uses another margin, scale and a focal term)."""

    __pydantic_config__ = FORBID_UNKNOWN_KEYS

    name: LossName = "ce"
    params: dict[str, float] = field(default_factory=dict)
    stage2_params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = loss_parameters(self.name)
        for section in ("params", "stage2_params"):
            unknown = sorted(set(getattr(self, section)) - set(known))
            if unknown:
                raise ConfigError(
                    f"unknown setting loss.{section}.{unknown[0]}; loss {self.name} takes: {', '.join(known) or 'none'}"
                )

    def for_stage(self, stage: int) -> dict[str, float]:
        """The loss parameters of ``stage`` (1 or 2)."""
        return {**self.params, **self.stage2_params} if stage == 2 else dict(self.params)


@dataclass(frozen=True)
class StageSettings:
    """One training stage's optimisation settings.

    ``schedule``: ``cosine`` decays per optimisation step, ``cosine_epoch`` per epoch as the authors' stage 2
    does (``lr * 0.5 * (1 + cos(pi * epoch / epochs))``, the first epoch at the full rate), ``step`` multiplies
    by ``gamma`` at each of ``milestones`` (epochs); ``warmup_epochs`` of linear warm-up precede any of them.
    ``clip_grad_norm`` rescales the gradients whose global norm exceeds it before each step (None: never), which
    keeps a high lr stable on small data sets.

    Fine-tuning a pretrained backbone (stage 1): ``optimizer`` sgd or adamw (AdamW uses ``weight_decay`` as its
    decoupled decay and ignores momentum); the backbone learns at ``lr * backbone_lr_scale`` while PIF and the
    new head learn at ``lr``; ``frozen`` names modules (as ``net.named_modules()`` calls them, e.g.
    ``backbone.body.conv1``, ``backbone.body.layer1``) whose weights stay as loaded and whose BatchNorm
    statistics stay fixed.
    """

    __pydantic_config__ = FORBID_UNKNOWN_KEYS

    epochs: NonNegativeInt = 10
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    nesterov: bool = False
    warmup_epochs: NonNegativeInt = 0
    schedule: Literal["cosine", "cosine_epoch", "step"] = "cosine"
    milestones: tuple[NonNegativeInt, ...] = ()
    gamma: PositiveFloat = 0.1
    mixup_alpha: NonNegativeFloat = 0.0
    sampler: SamplerKind = "instance"
    donor_sampler: SamplerKind = "instance"
    fusion_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    shift_bn: bool = True
    accumulate: PositiveInt = 1
    clip_grad_norm: PositiveFloat | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    backbone_lr_scale: PositiveFloat = 1.0
    frozen: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how to run: device (auto, cpu, cuda, cuda:N), AMP and channels_last on GPU, loader workers;
    ``test_each_stage2_epoch`` evaluates on the test set after every stage-2 epoch to report the best epoch
    as the authors' code does (reported beside the final epoch, never used to pick the saved model)."""

    __pydantic_config__ = FORBID_UNKNOWN_KEYS

    device: Annotated[str, AfterValidator(_device)] = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: NonNegativeInt = 0
    progress: bool = True
    test_each_stage2_epoch: bool = True
    tracking: Annotated[tuple[TrackerName, ...], BeforeValidator(_as_list)] = ("tensorboard",)
    mlflow_uri: str | None = None  # else MLFLOW_TRACKING_URI, else sqlite beside the run folder (tracking.py)
    mlflow_experiment: str | None = None  # else MLFLOW_EXPERIMENT_NAME, else pih2t-deploy


@dataclass(frozen=True)
class Recipe:
    """A complete, validated training recipe."""

    __pydantic_config__ = FORBID_UNKNOWN_KEYS

    name: str
    seed: int = 0
    method: Literal["ce", "h2t", "pih2t"] = "pih2t"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    stage1: StageSettings = field(default_factory=StageSettings)
    stage2: StageSettings = field(default_factory=StageSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def __post_init__(self) -> None:
        require_head_for_loss(self.loss.name, self.model.head)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of built-in types (stored in checkpoints and metrics, printed by ``--show``)."""
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def recipe_names() -> list[str]:
    """Names of the recipes shipped inside the package (read with importlib.resources, so a wheel has them)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in RECIPES.iterdir() if entry.name.endswith(".yaml"))


def _read_yaml(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    given = Path(name_or_path)
    path: Path | Traversable = given if given.suffix in (".yaml", ".yml") else RECIPES / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown recipe {name_or_path!r}; choose one of: {', '.join(recipe_names())} or a .yaml path"
        )
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of settings")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if base in seen:
        raise ConfigError(f"recipe {path} has a circular base {base!r}")
    merged = _read_yaml(base, (*seen, base))
    return _merge(merged, raw)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys, YAML values) to a raw recipe dict."""
    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. stage1.epochs=5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        target[parts[-1]] = value
    return out


def build_recipe(raw: dict[str, Any]) -> Recipe:
    """Validate a raw recipe dict into a Recipe (types, choices, bounds, unknown keys: one ConfigError line
    naming the key path)."""
    return validate_settings(Recipe, {"name": "custom", **raw})


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read a shipped recipe by name (or a YAML path), apply overrides, validate.

    The run's (and so the served model's) name is ``name`` when the recipe or an override sets it; otherwise
    the image folder's name for ``data.source=imagefolder`` (your data set names your model), else the
    recipe's file name.
    """
    raw = apply_overrides(_read_yaml(name_or_path), overrides or [])
    if raw.get("name") is None:
        data: dict[str, Any] = raw["data"] if isinstance(raw.get("data"), dict) else {}
        root = data.get("root") if data.get("source") == "imagefolder" else None
        raw["name"] = Path(str(root)).resolve().name if root else Path(name_or_path).stem
    return build_recipe(raw)
