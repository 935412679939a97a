"""The long-tail watch of a served model: what it predicts, how sure it is, and how the class mix it sees moves
away from the one it was trained for; and the answer it gives once a request's (or the watch's) prior applies.

``LongTail.answer`` is called once per request with the model's outputs. It
- adjusts the logits for the request's tau / prior, or, with ``--adapt-prior`` and enough answers seen
  before it, for the estimated deployment prior (a request that asks for its own wins);
- records the model's own posteriors in the label-shift window (``data.label_shift.PriorWatch``);
- counts the answers per top-1 class (at most ``max_class_labels`` label values: beyond that a class is counted
  as ``other (<group>)``), per Many/Medium/Few group, and their top-1 probability per group;
- offers low-confidence inputs to the rotating sample (``--log-low-confidence``).
With no request parameter and no adaptation the logits are returned untouched (the same object).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pih2t_deploy.data.label_shift import PriorWatch, normalised_log_prior, posteriors
from pih2t_deploy.data.longtail import GroupThresholds, softmax
from pih2t_deploy.runtime.classifier import ModelInfo
from pih2t_deploy.serving.low_confidence import LowConfidenceLog
from pih2t_deploy.serving.metrics import ServiceMetrics
from pih2t_deploy.serving.prior_knob import PriorRequest
from pih2t_deploy.serving.settings import ServeSettings


@dataclass
class Answer:
    """A request's outputs after the long-tail step: the logits to answer with, their probabilities, and the
    answer's parameters (empty when nothing was applied)."""

    logits: np.ndarray
    probabilities: np.ndarray
    parameters: dict[str, Any]


class LongTail:
    """The watch and the prior knob of one served model (see the module docstring)."""

    def __init__(self, info: ModelInfo, settings: ServeSettings, metrics: ServiceMetrics) -> None:
        self.info, self.settings, self.metrics = info, settings, metrics
        counts = info.class_counts if info.class_counts and len(info.class_counts) == info.num_classes else None
        self.model = info.prior_model
        self.groups = GroupThresholds.from_meta(info.meta).groups(counts) if counts else ["unknown"] * info.num_classes
        self.watch = (
            PriorWatch(self.model, min_samples=settings.adapt_min_samples)
            if self.model is not None and settings.watch
            else None
        )
        self.registered = {
            name: normalised_log_prior(values, info.num_classes, f"--prior {name}")
            for name, values in settings.priors.items()
        }
        self.class_label = _class_labels(info.labels, counts, self.groups, settings.max_class_labels)
        self._counters = [  # per class: its label's answer counter, its group's, its group's confidence histogram
            (
                metrics.predicted_class.labels(label),
                metrics.predicted_group.labels(group),
                metrics.confidence.labels(group),
            )
            for label, group in zip(self.class_label, self.groups, strict=True)
        ]
        folder = settings.low_confidence_dir
        self.low_confidence = (
            LowConfidenceLog(folder, settings.low_confidence_threshold, settings.low_confidence_keep)
            if folder
            else None
        )

    def answer(self, logits: np.ndarray, request: PriorRequest, inputs: Sequence[bytes | np.ndarray]) -> Answer:
        """The answer to one request's model outputs (module docstring)."""
        own = posteriors(logits, self.info.probabilities)
        shift, parameters = self._shift(request)  # adapted from the answers before this request
        if self.watch is not None:
            self.watch.add(own)
        if shift is None:
            adjusted, probabilities = logits, own
        else:
            base = np.log(np.maximum(own, 1e-45)) if self.info.probabilities else logits.astype(np.float64)
            probabilities = softmax(base + shift)
            # a graph that ends in softmax answers probabilities, adjusted or not
            adjusted = (probabilities if self.info.probabilities else base + shift).astype(np.float32)
        if self.settings.watch:
            self._count(probabilities)
        if self.low_confidence is not None and len(inputs) == len(probabilities):
            self.low_confidence.offer(list(inputs), probabilities, self.info.labels, self.groups)
        return Answer(adjusted, probabilities, parameters)

    def _shift(self, request: PriorRequest) -> tuple[np.ndarray | None, dict[str, Any]]:
        if request.asked and self.model is not None:
            return self.model.adjustment(request.tau, request.log_prior), request.describe()
        if self.settings.adapt_prior and self.watch is not None:
            weights = self.watch.adapted()
            if weights is not None:
                return weights, {"prior": "adapted", "label_shift_samples": self.watch.seen}
        return None, {}

    def _count(self, probabilities: np.ndarray) -> None:
        top = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(top)), top]
        for index, value in zip(top.tolist(), confidence.tolist(), strict=True):
            by_class, by_group, histogram = self._counters[index]
            by_class.inc()
            by_group.inc()
            histogram.observe(value)

    def report(self) -> dict[str, Any] | None:
        """The label-shift report (None without a watch), its gauges updated."""
        if self.watch is None:
            return None
        report = self.watch.report()
        self.metrics.label_shift.labels("train").set(report["total_variation"])
        self.metrics.label_shift.labels("reference").set(report["total_variation_from_reference"])
        self.metrics.label_shift_samples.set(report["samples"])
        return {
            **report,
            "classes": self.info.labels,
            "adapting": self.settings.adapt_prior and report["correction"]["ready"],
        }

    def close(self) -> None:
        """Finish writing queued low-confidence samples."""
        if self.low_confidence is not None:
            self.low_confidence.close()


def _class_labels(labels: list[str], counts: Sequence[int] | None, groups: list[str], cap: int) -> list[str]:
    """The metric label of each class: its name for the ``cap`` classes with most training images (all of
    them when there are no more than ``cap``), else ``other (<group>)``."""
    if len(labels) <= cap:
        return list(labels)
    order = np.argsort(-np.asarray(counts if counts else [0] * len(labels)), kind="stable")
    named = set(order[:cap].tolist())
    return [label if index in named else f"other ({groups[index]})" for index, label in enumerate(labels)]
