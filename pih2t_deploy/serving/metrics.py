"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process).

Under ``pih2t-serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set) every worker writes its values to files
and ``exposition`` sums them: counters and histograms add up, gauges follow their ``multiprocess_mode``."""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class ServiceMetrics:
    """Request counts by route and status, latency and batch-size histograms, queue depth, model load time;
    and what the model predicts: answers per class (``class_label`` caps the label values) and per group, the
    top-1 probability per group, the label-shift distance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pih2t_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "pih2t_request_latency_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pih2t_batch_size", "Images per model execution", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "pih2t_queue_depth", "Images waiting for a batch", registry=self.registry, multiprocess_mode="livesum"
        )
        self.in_flight = Gauge(
            "pih2t_requests_in_flight",
            "HTTP requests received and not yet answered (the autoscaling signal)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.load_seconds = Gauge(
            "pih2t_model_load_seconds",
            "Time to load and warm up the model",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.images = Counter("pih2t_images", "Images classified", registry=self.registry)
        self.handoffs = Counter(
            "pih2t_grpc_handoffs",
            "gRPC inference calls handed to a less busy worker (pih2t-serve --workers) and answered there",
            registry=self.registry,
        )
        self.predicted_class = Counter(
            "pih2t_predicted_class", "Answers by top-1 class", ["class"], registry=self.registry
        )
        self.predicted_group = Counter(
            "pih2t_predicted_group", "Answers by the Many/Medium/Few group of the top-1 class", ["group"],
            registry=self.registry,
        )  # fmt: skip
        self.confidence = Histogram(
            "pih2t_confidence", "Top-1 probability of answers, by group", ["group"], buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.label_shift = Gauge(
            "pih2t_label_shift_total_variation",
            "Total variation between the estimated deployment prior and the training prior (versus=train) or the "
            "prior the model's answers assume (versus=reference)",
            ["versus"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",  # each worker estimates from its own share of the answers
        )
        self.label_shift_samples = Gauge(
            "pih2t_label_shift_samples",
            "Answers the label-shift estimate has seen",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def exposition(self) -> bytes:
        """The Prometheus text of these metrics, or of all workers' together when they run as --workers."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """ASGI middleware counting every HTTP request by route template and status, and timing it."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics
        self._resolved: dict[tuple[str, int], tuple] = {}  # bounded: routes are templates, statuses few

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), {"code": 500}
        self.metrics.in_flight.inc()

        async def send_and_note_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            count, latency = self._series(route, status["code"])
            count.inc()
            latency.observe(time.perf_counter() - started)

    def _series(self, route: str, status: int) -> tuple:
        """The request counter and latency histogram of ``route`` answered with ``status``, resolved once."""
        found = self._resolved.get((route, status))
        if found is None:
            found = self.metrics.requests.labels(route, str(status)), self.metrics.latency.labels(route)
            self._resolved[(route, status)] = found
        return found
