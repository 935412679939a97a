"""The class prior as a knob per request: ``tau`` and ``prior`` parameters read from any front end, checked,
and turned into the vector added to the model's logits (``data.label_shift.PriorModel.adjustment``).

``tau``: a number in [0, 10] (the logit-adjustment strength; the artifact's folded tau is the default).
``prior``: one non-negative number per class (a JSON list, or text of comma-separated numbers), or the name of
a prior registered with ``pih2t-serve --prior NAME=FILE``. A bad value is InvalidInput (HTTP 400) saying why.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pih2t_deploy.data.label_shift import PriorModel, normalised_log_prior, read_prior_values
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.serving.errors import InvalidInput, quote

MAX_TAU = 10.0
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?", re.ASCII)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class PriorRequest:
    """What a request asked for: a tau, a deployment prior (its normalised log) and the prior's name (or
    ``"given"``), each None when not asked."""

    tau: float | None = None
    log_prior: np.ndarray | None = None
    prior_name: str | None = None

    @property
    def asked(self) -> bool:
        """Whether the request asked for anything."""
        return self.tau is not None or self.log_prior is not None

    def describe(self) -> dict[str, object]:
        """What was applied, for the answer's parameters."""
        shown: dict[str, object] = {}
        if self.tau is not None:
            shown["tau"] = self.tau
        if self.prior_name is not None:
            shown["prior"] = self.prior_name
        return shown


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{what} must be a number, got {quote(value)}")
    if isinstance(value, str):
        if not NUMBER.fullmatch(value.strip()):
            raise InvalidInput(f"{what} must be a number, got {quote(value)}")
        value = float(value)
    if not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {quote(value)}")
    return float(value)


def parse_tau(raw: object) -> float | None:
    """``tau`` from a request (None when absent); InvalidInput outside [0, MAX_TAU]."""
    if raw is None or raw == "":
        return None
    tau = _number(raw, "tau")
    if not 0 <= tau <= MAX_TAU:
        raise InvalidInput(f"tau must lie between 0 and {MAX_TAU:g}, got {tau:g}")
    return tau


def parse_prior(raw: object, num_classes: int, registered: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str] | None:
    """(normalised log prior, its name or "given") for a request's ``prior``; None when absent."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str) and NAME.fullmatch(raw.strip()) and not NUMBER.fullmatch(raw.strip()):
        name = raw.strip()
        if name not in registered:
            known = ", ".join(sorted(registered)) or "none (register one with pih2t-serve --prior NAME=FILE)"
            raise InvalidInput(f"unknown prior {quote(name)}; registered: {known}")
        return registered[name], name
    if isinstance(raw, str):
        text = raw.strip()
        parts = json.loads(text) if text.startswith("[") and len(text) < 1_000_000 else text.split(",")
        raw = parts
    if not isinstance(raw, list) or len(raw) > 1_000_000:
        raise InvalidInput("prior must be a list of numbers, comma-separated numbers, or a registered name")
    values = [_number(value, "prior") for value in raw]
    try:
        return normalised_log_prior(values, num_classes), "given"
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def parse_request(
    tau: object, prior: object, model: PriorModel | None, registered: Mapping[str, np.ndarray]
) -> PriorRequest:
    """The PriorRequest of a request's raw ``tau`` and ``prior``; InvalidInput for a bad value, or when the
    model records no class counts to adjust by."""
    if (tau is None or tau == "") and (prior is None or prior == ""):
        return PriorRequest()
    if model is None:
        raise InvalidInput("this model records no training counts per class, so tau and prior cannot apply")
    try:
        parsed = parse_prior(prior, model.num_classes, registered)
    except json.JSONDecodeError:
        raise InvalidInput("prior is not a valid JSON list of numbers") from None
    log_prior, name = parsed if parsed else (None, None)
    return PriorRequest(parse_tau(tau), log_prior, name)


def load_priors(specs: list[str], num_classes: int) -> dict[str, tuple[float, ...]]:
    """``NAME=FILE`` options: each file a JSON list of numbers, or numbers separated by commas, spaces or new
    lines, one per class. ConfigError (one line) naming the option for anything wrong."""
    priors: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not NAME.fullmatch(name) or NUMBER.fullmatch(name):
            raise ConfigError(f"--prior {spec!r} must look like NAME=FILE (NAME: letters, digits, '_', '-', '.')")
        try:
            values = read_prior_values(file)
            normalised_log_prior(values, num_classes, f"--prior {name}")
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"--prior {spec}: {getattr(exc, 'strerror', None) or exc}") from None
        priors[name] = tuple(float(v) for v in values)
    return priors
