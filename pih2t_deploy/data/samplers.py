"""Samplers: instance-balanced, class-balanced and square-root, seeded per epoch and split across ranks.

A sampler with power q draws each image with probability proportional to n_c^(q-1) for its class c, so
classes are drawn with probability proportional to n_c^q: q=1 instance-balanced (a shuffled permutation),
q=0 class-balanced (a class uniformly, then one of its images), q=0.5 square-root. Every rank draws the same
global sequence from (seed, epoch) and keeps its own slice, so the distribution is the same with any number
of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Sampler

from pih2t_deploy.errors import ConfigError

SamplerKind = Literal["instance", "sqrt", "class"]
POWERS: dict[str, float] = {"instance": 1.0, "sqrt": 0.5, "class": 0.0}


class ClassPowerSampler(Sampler[int]):
    """Draw ``num_samples`` indices per epoch with class probability proportional to n_c^power."""

    def __init__(
        self,
        targets: Sequence[int],
        power: float,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        counts = np.bincount(self.targets)
        self.weights = torch.from_numpy(counts[self.targets].astype(np.float64) ** (power - 1.0))
        self.power = power
        total = num_samples or len(self.targets)
        self.per_rank = total // world_size
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the sequence of ``epoch`` next (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = self.per_rank * self.world_size
        if self.power == 1.0:
            repeats = -(-total // len(self.targets))
            order = torch.cat([torch.randperm(len(self.targets), generator=generator) for _ in range(repeats)])
        else:
            order = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(order[:total][self.rank :: self.world_size].tolist())


def make_sampler(kind: str, targets: Sequence[int], **kwargs) -> ClassPowerSampler:
    """``kind`` is instance, class or sqrt."""
    if kind not in POWERS:
        raise ConfigError(f"unknown sampler {kind!r}; choose one of: {', '.join(POWERS)}")
    return ClassPowerSampler(targets, POWERS[kind], **kwargs)
