"""The service's limits and batching settings, checked when built (before any server starts)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pih2t_deploy.data.images import MAX_PIXELS
from pih2t_deploy.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """Service limits and batching settings; a value out of range raises ConfigError (exit 2, one line) when
    the settings are built, before any server starts."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_upload_mb: float = 10.0
    timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    max_pixels: int = MAX_PIXELS
    max_request_pixels: int = 2 * MAX_PIXELS
    default_top_k: int = 5
    decode_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    # /v1/model shows the process id and the software versions only when asked (--expose-process-info)
    expose_process_info: bool = False
    server_pid: int | None = None  # the parent of --workers processes (else the serving process itself)
    # long-tail watch: per-class and per-group counters, confidence histograms, the label-shift estimate
    watch: bool = True
    adapt_prior: bool = False
    adapt_min_samples: int = 500  # answers seen before --adapt-prior corrects anything
    priors: dict[str, tuple[float, ...]] = field(default_factory=dict)  # --prior NAME=FILE
    max_class_labels: int = 100  # classes beyond it are counted as "other (<group>)" in /metrics
    low_confidence_dir: Path | None = None
    low_confidence_threshold: float = 0.5
    low_confidence_keep: int = 1000

    def __post_init__(self) -> None:
        at_least_one = (
            "max_batch",
            "max_queue",
            "max_pixels",
            "max_request_pixels",
            "default_top_k",
            "decode_workers",
            "max_class_labels",
            "low_confidence_keep",
            "adapt_min_samples",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        positive = (("max_upload_mb", False), ("timeout_s", False), ("body_timeout_s", False))
        for name, allow_zero in (("max_wait_ms", True), *positive):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value != value or value < 0 or (value == 0 and not allow_zero):
                bound = ">= 0" if allow_zero else "> 0"
                raise ConfigError(f"--{name.replace('_', '-')} must be a number {bound}, got {value!r}")
        if not 0 < self.low_confidence_threshold <= 1:
            raise ConfigError(f"--low-confidence-threshold must lie in (0, 1], got {self.low_confidence_threshold}")
        if self.adapt_prior and not self.watch:
            raise ConfigError("--adapt-prior needs the watch it estimates the prior from: drop --no-watch")

    @property
    def max_upload_bytes(self) -> int:
        """The largest request body in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)
