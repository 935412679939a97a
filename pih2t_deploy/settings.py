"""Validation shared by every settings dataclass built from user-supplied dicts (recipes, metadata).

Two levels: ``reject_unknown`` (names an unknown key; used where pydantic is not installed, e.g. the
torch-free serving path reading an artifact) and ``validate_settings`` (pydantic: types, ``Literal`` choices,
bounds and unknown keys of a whole nested dataclass tree, in one line naming the key path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Final, TypeVar

from pih2t_deploy.errors import ConfigError

T = TypeVar("T")

# Set as ``__pydantic_config__`` on a settings dataclass: keys that are no field are refused.
FORBID_UNKNOWN_KEYS: Final[dict[str, str]] = {"extra": "forbid"}


def reject_unknown(cls: type, data: Mapping[str, Any], prefix: str = "") -> None:
    """ConfigError naming the first key of ``data`` that is not a field of dataclass ``cls``, and the known ones.

    ``prefix`` places the key in context, e.g. ``"stage1."`` gives ``unknown setting stage1.epoch``.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(sorted(known))}")


def validate_settings(cls: type[T], data: Any, prefix: str = "") -> T:
    """``data`` validated into dataclass ``cls`` by its type hints (pydantic), nested dataclasses included.

    Guarantees: the result is an instance of ``cls`` whose fields have their declared types (``"4"`` becomes
    ``4``; ``two`` for an int, ``maybe`` for a bool, a value outside a ``Literal`` or a bound, and a key that
    is no field are refused); any failure is one ConfigError line naming the dotted key path (after
    ``prefix``), the value given and what is allowed. Checks a dataclass's ``__post_init__`` makes still run.
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(cls, exc.errors()[0], prefix)) from None


def _one_line(cls: type, error: Mapping[str, Any], prefix: str) -> str:
    path = prefix + ".".join(str(part) for part in error["loc"])
    if error["type"] == "unexpected_keyword_argument":
        owner = _dataclass_at(cls, error["loc"][:-1])
        known = f"; known: {', '.join(sorted(f.name for f in fields(owner)))}" if owner is not None else ""
        return f"unknown setting {path}{known}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"setting {path}={error.get('input')!r} is not allowed: {message}"


def _dataclass_at(cls: type, loc: tuple[Any, ...]) -> type | None:
    """The nested settings dataclass at key path ``loc`` below ``cls`` (sections are fields whose default
    factory is their dataclass), or None."""
    owner: Any = cls
    for part in loc:
        by_name = {f.name: f for f in fields(owner)}
        if part not in by_name or not is_dataclass(by_name[part].default_factory):
            return None
        owner = by_name[part].default_factory
    return owner
