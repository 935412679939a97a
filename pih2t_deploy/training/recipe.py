"""Recipes: YAML files shipped in the package (``pih2t_deploy/recipes/<name>.yaml``), with ``key=value`` overrides.

A recipe may name a ``base`` recipe whose settings it extends. Any field can be overridden on the command
line with a dotted key, e.g. ``stage1.epochs=5`` or ``data.imbalance_factor=100``; values are parsed as YAML.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pih2t_deploy.data.sources import DataConfig
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.models import METHODS
from pih2t_deploy.settings import reject_unknown

RECIPES = resources.files("pih2t_deploy") / "recipes"
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class ModelSettings:
    """The network apart from num_classes / in_channels (which the data decides) and the method."""

    arch: str = "digits_net"
    head: str = "linear"
    cosine_scale: float = 16.0
    lws: bool = False
    pif_activation: str | None = None
    backbone_weights: str | None = None


@dataclass(frozen=True)
class LossSettings:
    """The base method's loss and its parameters (used in both stages)."""

    name: str = "ce"
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSettings:
    """One training stage's optimisation settings."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: int = 0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    mixup_alpha: float = 0.0
    sampler: str = "instance"
    donor_sampler: str = "instance"
    fusion_ratio: float = 0.3
    shift_bn: bool = True
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError("epochs must be >= 0, batch_size and accumulate >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.fusion_ratio <= 1.0:
            raise ConfigError(f"fusion_ratio must lie in [0, 1], got {self.fusion_ratio}")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how to run: device (auto, cpu, cuda), AMP and channels_last on GPU, loader workers."""

    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int = 0
    progress: bool = True


@dataclass(frozen=True)
class Recipe:
    """A complete, validated training recipe."""

    name: str
    seed: int = 0
    method: str = "pih2t"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    stage1: StageSettings = field(default_factory=StageSettings)
    stage2: StageSettings = field(default_factory=StageSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (stored in checkpoints and metrics)."""
        data = asdict(self)
        data["stage1"]["milestones"] = list(self.stage1.milestones)
        data["stage2"]["milestones"] = list(self.stage2.milestones)
        return data


_SECTIONS = {
    "data": DataConfig,
    "model": ModelSettings,
    "loss": LossSettings,
    "stage1": StageSettings,
    "stage2": StageSettings,
    "runtime": RuntimeSettings,
}
_TOP = {"name", "seed", "method", "base", *_SECTIONS}


def recipe_names() -> list[str]:
    """Names of the recipes shipped inside the package (read with importlib.resources, so a wheel has them)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in RECIPES.iterdir() if entry.name.endswith(".yaml"))


def _read_yaml(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path: Path | Traversable = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES / f"{name_or_path}.yaml"
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


def _section(cls: type, name: str, values: Any) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"recipe section {name!r} must be a mapping")
    reject_unknown(cls, values, f"{name}.")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"recipe section {name!r}: {exc}") from None


def build_recipe(raw: dict[str, Any]) -> Recipe:
    """Validate a raw recipe dict into a Recipe; unknown keys are named in the error."""
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"unknown recipe key {unknown[0]!r}; known: {', '.join(sorted(_TOP - {'base'}))}")
    sections = {name: _section(cls, name, raw.get(name)) for name, cls in _SECTIONS.items()}
    try:
        return Recipe(
            name=str(raw.get("name", "custom")),
            seed=int(raw.get("seed", 0)),
            method=raw.get("method", "pih2t"),
            **sections,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid recipe: {exc}") from None


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read a shipped recipe by name (or a YAML path), apply overrides, validate.

    The run's (and so the served model's) name is ``name`` when the recipe or an override sets it; otherwise
    the image folder's name for ``data.source=imagefolder`` (your data set names your model), else the
    recipe's file name.
    """
    raw = apply_overrides(_read_yaml(name_or_path), overrides or [])
    if raw.get("name") is None:
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        root = data.get("root") if data.get("source") == "imagefolder" else None
        raw["name"] = Path(str(root)).resolve().name if root else Path(name_or_path).stem
    return build_recipe(raw)
