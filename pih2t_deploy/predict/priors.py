"""The class prior in a batch job: ``--tau`` / ``--prior FILE`` for every row, the label-shift estimate of the
job's own inputs in its summary, and ``--adapt-prior``, which scores the job a second time with it.

The arithmetic is the server's (``data.label_shift``): the same shift of the logits, the same EM estimate
(over a uniform random sample of at most 10,000 of the job's posteriors, so memory does not grow with the
job), the same smoothed and bounded correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.data.label_shift import PriorModel, PriorWatch, normalised_log_prior, read_prior_values
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.runtime.classifier import ModelInfo

MAX_TAU = 10.0


def read_prior_file(path: Path, num_classes: int) -> np.ndarray:
    """The normalised log prior in ``path`` (``data.label_shift.read_prior_values``); ConfigError naming
    --prior otherwise."""
    try:
        return normalised_log_prior(read_prior_values(path), num_classes, f"--prior {path}")
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--prior {path}: {getattr(exc, 'strerror', None) or exc}") from None


@dataclass(frozen=True)
class JobPrior:
    """How a job treats the class prior: the fixed shift of every row's logits (``--tau`` / ``--prior``),
    whether it adapts to its own inputs, and the watch that estimates their prior (None without counts)."""

    model: PriorModel | None
    shift: np.ndarray | None
    adapt: bool
    described: dict[str, Any]

    @classmethod
    def for_job(cls, info: ModelInfo, tau: float | None, prior: Path | None, adapt: bool) -> JobPrior:
        """Checked options of a job; ConfigError for a bad combination or value."""
        model = info.prior_model
        asked = tau is not None or prior is not None
        if (asked or adapt) and model is None:
            raise ConfigError(
                "this model records no training counts per class: --tau, --prior and --adapt-prior need them"
            )
        if asked and adapt:
            raise ConfigError("choose --tau / --prior, or --adapt-prior (which estimates the prior itself)")
        if tau is not None and not 0 <= tau <= MAX_TAU:
            raise ConfigError(f"--tau must lie between 0 and {MAX_TAU:g}, got {tau:g}")
        if not asked or model is None:
            return cls(model, None, adapt, {})
        log_prior = read_prior_file(prior, info.num_classes) if prior is not None else None
        described = {**({"tau": tau} if tau is not None else {}), **({"prior": str(prior)} if prior else {})}
        return cls(model, model.adjustment(tau, log_prior), adapt, described)

    def watch(self) -> PriorWatch | None:
        """A fresh estimate over a uniform sample of the job's posteriors (None without counts)."""
        return PriorWatch(self.model, reservoir=True, min_samples=1) if self.model is not None else None
