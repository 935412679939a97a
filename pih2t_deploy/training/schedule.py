"""Learning-rate schedules per optimisation step: linear warm-up, then cosine decay (per step or per epoch) or
step decay."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from pih2t_deploy.training.recipe import StageSettings


def lr_factor(settings: StageSettings, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimisation step ``step`` (0-based), for torch's LambdaLR.

    ``cosine_epoch`` holds the rate for a whole epoch e (0-based, counted after warm-up) at
    0.5 * (1 + cos(pi * e / (epochs - warmup_epochs))): the first epoch runs at the full rate, as the authors'
    stage 2 does.
    """
    warmup = settings.warmup_epochs * steps_per_epoch
    total = max(1, settings.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        epoch = step // steps_per_epoch
        if settings.schedule == "cosine_epoch":
            after_warmup = max(1, settings.epochs - settings.warmup_epochs)
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - settings.warmup_epochs) / after_warmup))
        return settings.gamma ** bisect.bisect_right(settings.milestones, epoch)

    return factor
