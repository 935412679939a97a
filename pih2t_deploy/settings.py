"""Validation shared by every settings dataclass built from user-supplied dicts (recipes, metadata)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from pih2t_deploy.errors import ConfigError


def reject_unknown(cls: type, data: Mapping[str, Any], prefix: str = "") -> None:
    """ConfigError naming the first key of ``data`` that is not a field of dataclass ``cls``, and the known ones.

    ``prefix`` places the key in context, e.g. ``"stage1."`` gives ``unknown setting stage1.epoch``.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(sorted(known))}")
