"""The inference service the routes share: its settings (checked when built), its error type, and its state
(classifier, micro-batcher, decode threads, metrics, readiness) with the steps every route uses.

Routers get it through the ``get_service`` dependency; ``rest.create_app`` builds one per application.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from pih2t_deploy.data.images import MAX_PIXELS
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.runtime import Classifier
from pih2t_deploy.serving.batcher import MicroBatcher, QueueFullError, RequestTimeoutError
from pih2t_deploy.serving.images import BadImageError, decode_batch, request_pixels
from pih2t_deploy.serving.metrics import ServiceMetrics

INLINE_DECODE_PIXELS = 64 * 64  # decoding this few pixels takes less time than handing it to a thread


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

    def __post_init__(self) -> None:
        at_least_one = ("max_batch", "max_queue", "max_pixels", "max_request_pixels", "default_top_k", "decode_workers")
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

    @property
    def max_upload_bytes(self) -> int:
        """The largest request body in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """An error answer: HTTP ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class InferenceService:
    """One served model: ``start`` loads and warms it up, ``stop`` drains it; readiness in between."""

    def __init__(self, load: Callable[[], Classifier], settings: ServeSettings | None = None) -> None:
        self.load = load
        self.settings = settings or ServeSettings()
        self.metrics = ServiceMetrics()
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self.on_the_way = 0  # requests being read or decoded, not yet handed to the batcher
        self._loaded = False
        # a few dedicated decode threads: bounded CPU contention with inference and bounded per-thread memory
        self.decode_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="pih2t-decode")

    @property
    def serving(self) -> bool:
        """Loaded, warmed up and its batch worker running: requests are answered (also while draining)."""
        return self._loaded and self.batcher is not None and self.batcher.healthy

    @property
    def ready(self) -> bool:
        """Serving and not shutting down: what readiness probes report."""
        return self.serving and not self.draining

    async def start(self) -> None:
        """Load the classifier in a thread, run one batch of each served size, start the batcher. A load
        failure is kept in ``load_error`` (liveness reports it, so an orchestrator restarts the process)."""
        started = time.perf_counter()
        try:
            classifier = await run_in_threadpool(self.load)
            for size in sorted({1, self.settings.max_batch}):
                await run_in_threadpool(
                    classifier.predict, np.zeros((size, *classifier.input_shape), classifier.input_dtype)
                )
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.metrics.load_seconds.set(time.perf_counter() - started)
        self.classifier = classifier
        self.batcher = MicroBatcher(
            classifier.predict,
            max_batch=self.settings.max_batch,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            timeout_s=self.settings.timeout_s,
            on_batch=self.metrics.batch_size.observe,
            arrivals=lambda: self.on_the_way,
        )
        self.batcher.start()
        self._loaded = True

    async def stop(self) -> None:
        """Not ready from now on; finish queued work, then release the decode threads."""
        self.draining, self._loaded = True, False
        if self.batcher is not None:
            await self.batcher.stop()
        self.decode_pool.shutdown(wait=True)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request on its way to the batcher (its body being read, its images decoded). The batcher
        holds a batch open for requests on their way, and with none on the way runs it at once instead of
        waiting out --max-wait-ms for requests that cannot come."""
        self.on_the_way += 1
        try:
            yield
        finally:
            self.on_the_way -= 1

    def require_ready(self) -> Classifier:
        """The classifier, or 503 while loading or after shutdown began (draining still serves)."""
        if not self.serving or self.classifier is None:
            raise ApiError(503, "the model is not ready yet", {"Retry-After": "1"})
        return self.classifier

    def model_for(self, name: str, version: str | None = None) -> Classifier:
        """The classifier if ``name`` (and ``version``, when given) is what this server serves, else 404."""
        classifier = self.require_ready()
        if name != classifier.info.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {classifier.info.name!r}")
        if version is not None and version != classifier.info.version:
            raise ApiError(
                404, f"unknown version {version!r} of model {name!r}; this server serves {classifier.info.version!r}"
            )
        return classifier

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits through the micro-batcher; queue-full and timeout become 503 / 504."""
        self.require_ready()
        batcher = self.batcher
        assert batcher is not None  # ready implies a batcher
        try:
            return await batcher.submit(batch)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        except RequestTimeoutError as exc:
            raise ApiError(504, str(exc)) from None
        finally:
            self.metrics.queue_depth.set(batcher.depth)

    async def decode(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        """Preprocessed batch for encoded images; bad images become 4xx. Small images (at most
        INLINE_DECODE_PIXELS in all, from their headers) are decoded on the event loop, where a hand-off to a
        thread would cost more than the decoding; larger ones in a decode thread."""
        classifier = self.require_ready()
        if len(blobs) > self.settings.max_batch:
            raise ApiError(413, f"{len(blobs)} images in one request; the limit is {self.settings.max_batch}")
        try:
            pixels = request_pixels(blobs, self.settings.max_request_pixels)
            if pixels <= INLINE_DECODE_PIXELS:
                return decode_batch(blobs, classifier.prepare, self.settings.max_pixels)
            return await asyncio.get_running_loop().run_in_executor(
                self.decode_pool, decode_batch, blobs, classifier.prepare, self.settings.max_pixels
            )
        except BadImageError as exc:
            raise ApiError(exc.status, str(exc)) from None


async def get_service(request: Request) -> InferenceService:
    """FastAPI dependency: the service of the application that received ``request`` (async, so FastAPI
    calls it on the event loop instead of handing it to a thread)."""
    return request.app.state.service


Service = Annotated[InferenceService, Depends(get_service)]
