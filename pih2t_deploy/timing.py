"""Timing helpers for benchmarks: interleaved rounds so that machine noise hits every candidate alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    """Seconds per call: the median and percentiles over all repetitions of all rounds."""

    median: float
    p90: float
    p99: float
    calls: int


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_interleaved(
    candidates: dict[str, Callable[[], object]], *, rounds: int = 5, repeats: int = 5, warmup: int = 2
) -> dict[str, Timing]:
    """Time every candidate ``repeats`` times per round, cycling through the candidates ``rounds`` times."""
    for function in candidates.values():
        for _ in range(warmup):
            function()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, function in candidates.items():
            for _ in range(repeats):
                started = time.perf_counter()
                function()
                samples[name].append(time.perf_counter() - started)
    return {
        name: Timing(statistics.median(values), _percentile(values, 0.9), _percentile(values, 0.99), len(values))
        for name, values in samples.items()
    }
