"""Label shift: the class prior a model's answers assume, per-request priors, and the deployment prior
estimated from the model's own outputs (numpy only, so the torch-free server and pih2t-predict share it).

**The prior as a knob.** A folded model computes z = z_raw - tau0 * log p_train (tau0 the logit adjustment
folded at export, 0 when none). Asking for another tau, or for a deployment prior q, gives exactly what a
model folded with them would compute:

    z' = z - (tau - tau0) * log p_train + log q        (q normalised to sum 1)

**The estimate.** Saerens, Latinne and Decaestecker's EM (2002): with posteriors p(y|x) calibrated to a
reference prior r, the deployment prior q is the fixed point of q = mean_x [p(y|x) q(y)/r(y) / sum_k p(k|x)
q(k)/r(k)]. We chose EM over black-box shift estimation because it needs nothing the artifact does not already
hold: BBSE would need a confusion matrix measured on labelled held-out data at export, which an artifact exported
without ``--eval-data`` does not have, and its K x K inverse is unstable for the many rare classes a long-tailed
model has. EM's price is that the posteriors must be calibrated to the reference prior: how well the estimate
works on our models is measured in docs/monitoring.md.

**The reference prior r** (``reference_prior``) is the prior the model's unadjusted answers are calibrated to.
When the export had labelled images (``--eval-data``), r is *measured* there (``fit_reference_prior``): the
prior for which EM on those images returns their own label frequencies, which absorbs how far the model's
probabilities are from calibrated (on Digits-LT it halves the estimate's error under a reversed long tail,
docs/monitoring.md). Otherwise r follows from the training: a classifier last trained on instance-balanced
batches with a plain loss answers for the training prior; one re-trained on class-balanced batches (PI-H2T's
and H2T's stage 2) or with a balancing loss answers for a uniform prior; a folded tau0 then divides by
p_train^tau0. So r is proportional to p_train^(a - tau0), a = 1 or 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.data.longtail import log_prior, softmax

BALANCING_LOSSES = ("balanced_softmax", "ldam", "gcl")
PRIOR_FLOOR = 1e-30  # a zero in a requested prior: the class is (practically) never predicted


def normalised_log_prior(values: Sequence[float] | np.ndarray, num_classes: int, what: str = "prior") -> np.ndarray:
    """log q for ``values`` normalised to sum 1 (zeros floored at PRIOR_FLOOR); ValueError (one line) unless it
    is one finite non-negative number per class with a positive sum."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size != num_classes:
        raise ValueError(f"{what} must give one number per class ({num_classes}), got {array.size}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{what} must be finite non-negative numbers")
    if array.sum() <= 0:
        raise ValueError(f"{what} must have a positive sum")
    return np.log(np.maximum(array / array.sum(), PRIOR_FLOOR))


def read_prior_values(path: str | Path) -> list[float]:
    """The numbers of a prior file: a JSON list, or numbers separated by commas, spaces or new lines (OSError,
    ValueError for an unreadable or malformed file)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        values = json.loads(text)
        if not isinstance(values, list):
            raise ValueError("a JSON prior file must hold a list of numbers")
        return [float(v) for v in values]
    return [float(v) for v in re.split(r"[\s,]+", text.strip())]


def trained_balanced(meta: Mapping[str, Any]) -> bool:
    """Whether the classifier's last training answers for a uniform prior: stage 2 re-trained it on
    class-balanced batches, or its loss balances the classes. Checkpoints that do not record their training
    (imports of the authors' files: their stage 2 is class-balanced) count as balanced for h2t/pih2t."""
    training = meta.get("training") or {}
    loss = (training.get("loss") or {}).get("name")
    if loss in BALANCING_LOSSES:
        return True
    stage2 = training.get("stage2") or {}
    if stage2:
        return meta.get("stage") == 2 and stage2.get("sampler") == "class"
    return meta.get("method") in ("h2t", "pih2t")


def fit_reference_prior(
    probabilities: np.ndarray, labels: np.ndarray, *, iterations: int = 1000, tolerance: float = 1e-10
) -> np.ndarray | None:
    """The prior r for which EM over ``probabilities`` [N, K] of labelled images returns their label
    frequencies f: the bias b with mean softmax(log p + b) = f (found by proportional fitting), r = f e^-b,
    normalised. None when some class has no image (its frequency cannot be matched)."""
    num_classes = probabilities.shape[1]
    frequencies = np.bincount(np.asarray(labels), minlength=num_classes)[:num_classes] / len(labels)
    if (frequencies == 0).any():
        return None
    log_p = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), 1e-300))
    bias = np.zeros(num_classes)
    for _ in range(iterations):
        step = np.log(frequencies) - np.log(softmax(log_p + bias).mean(axis=0))
        bias += step
        if np.abs(step).max() < tolerance:
            break
    reference = frequencies * np.exp(-(bias - bias.max()))
    return reference / reference.sum()


@dataclass(frozen=True)
class PriorModel:
    """What a served model's answers assume about the class prior: the training log-prior, the tau folded
    into the model, whether its classifier was trained balanced, and the reference prior measured at export
    (None when it was not)."""

    log_train_prior: np.ndarray
    folded_tau: float
    balanced: bool
    measured_reference: np.ndarray | None = None
    temperature: float = 1.0  # the folded logits are (z - tau0 log p_train) / temperature

    @classmethod
    def from_artifact(
        cls,
        class_counts: Sequence[int],
        meta: Mapping[str, Any],
        folded_tau: float,
        measured_reference: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> PriorModel:
        """The prior model of an artifact (its training counts, checkpoint metadata, folded tau, the reference
        prior its export measured, if any, and its folded temperature)."""
        measured = np.asarray(measured_reference, dtype=np.float64) if measured_reference is not None else None
        return cls(log_prior(class_counts), float(folded_tau), trained_balanced(meta), measured, float(temperature))

    @property
    def reference_basis(self) -> str:
        """Where the reference prior comes from, in words."""
        if self.measured_reference is not None:
            return "measured on labelled images at export"
        kind = "uniform (class-balanced classifier)" if self.balanced else "the training prior"
        return f"{kind}, divided by p_train^{self.folded_tau:g} (the folded tau)" if self.folded_tau else kind

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.log_train_prior)

    @property
    def train_prior(self) -> np.ndarray:
        """p_train."""
        return np.exp(self.log_train_prior)

    @property
    def log_reference_prior(self) -> np.ndarray:
        """log r: measured at export, else r proportional to p_train^((a - tau0) / T) (module docstring)."""
        if self.measured_reference is not None:
            return np.log(np.maximum(self.measured_reference, PRIOR_FLOOR))
        exponent = ((0.0 if self.balanced else 1.0) - self.folded_tau) / self.temperature
        raw = exponent * self.log_train_prior
        return raw - np.logaddexp.reduce(raw)

    def adjustment(self, tau: float | None = None, log_prior: np.ndarray | None = None) -> np.ndarray:
        """The vector added to the model's logits for a request asking for ``tau`` and/or a deployment prior
        (given as its normalised log): -(tau - tau0) log p_train / T + log q, T the folded temperature (so the
        answer is what a model folded with that tau and T would give, re-weighted for q)."""
        shift = np.zeros(self.num_classes)
        if tau is not None:
            shift -= (tau - self.folded_tau) * self.log_train_prior / self.temperature
        if log_prior is not None:
            shift += log_prior
        return shift


def estimate_prior(
    probabilities: np.ndarray, log_reference: np.ndarray, *, tolerance: float = 1e-8, max_iterations: int = 1000
) -> np.ndarray:
    """The deployment prior by EM (module docstring) from posteriors [N, K] calibrated to the reference prior
    exp(``log_reference``); the reference itself when N is 0."""
    reference = np.exp(log_reference)
    if len(probabilities) == 0:
        return reference
    posteriors = np.asarray(probabilities, dtype=np.float64)
    prior = reference.copy()
    for _ in range(max_iterations):
        weighted = posteriors * (prior / reference)
        weighted /= weighted.sum(axis=1, keepdims=True)
        updated = weighted.mean(axis=0)
        if np.abs(updated - prior).max() < tolerance:
            return updated
        prior = updated
    return prior


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the L1 distance between two distributions."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


@dataclass(frozen=True)
class Correction:
    """How answers would be re-weighted for an estimated prior: smoothed toward the reference (``smoothing``),
    each class's weight bounded to [1/max_weight, max_weight]."""

    smoothing: float = 0.1
    max_weight: float = 10.0

    def log_weights(self, estimated: np.ndarray, log_reference: np.ndarray) -> np.ndarray:
        """log(q_s / r), q_s = (1 - smoothing) q + smoothing r, clipped to +-log(max_weight)."""
        reference = np.exp(log_reference)
        smoothed = (1 - self.smoothing) * np.asarray(estimated) + self.smoothing * reference
        bound = np.log(self.max_weight)
        return np.clip(np.log(np.maximum(smoothed, PRIOR_FLOOR)) - log_reference, -bound, bound)


def posteriors(logits: np.ndarray, probabilities_out: bool) -> np.ndarray:
    """Class probabilities of a batch of model outputs (the outputs themselves for a softmax graph)."""
    return np.asarray(logits, dtype=np.float64) if probabilities_out else softmax(logits)


class PriorWatch:
    """The posteriors of the last ``window`` answers (a ring of float32 rows, at most ``max_bytes``) and the
    deployment prior EM estimates from them, refreshed every ``refresh`` new answers. Thread-safe.

    With ``reservoir`` the window is instead a uniform random sample of every answer so far (for a batch job,
    whose inputs often come in class order). ``adapted()`` gives the correction's log-weights once
    ``min_samples`` answers are in, else None."""

    def __init__(
        self,
        model: PriorModel,
        *,
        window: int = 10_000,
        max_bytes: int = 64 << 20,
        refresh: int = 256,
        min_samples: int = 500,
        correction: Correction | None = None,
        reservoir: bool = False,
        seed: int = 0,
    ) -> None:
        import threading

        self.model, self.refresh, self.min_samples = model, refresh, min_samples
        self.reservoir = np.random.default_rng(seed) if reservoir else None
        self.correction = correction or Correction()
        self.capacity = max(1, min(window, max_bytes // (4 * model.num_classes)))
        self.rows = np.zeros((self.capacity, model.num_classes), dtype=np.float32)
        self.seen, self.position = 0, 0
        self.lock = threading.Lock()
        self._estimate: np.ndarray = np.exp(model.log_reference_prior)
        self._estimated_at = 0

    def add(self, probabilities: np.ndarray) -> None:
        """Record a batch of posteriors [N, K] (the model's own, before any request's adjustment)."""
        if self.reservoir is not None:
            self._sample(np.asarray(probabilities, dtype=np.float32))
            return
        batch = np.asarray(probabilities, dtype=np.float32)[-self.capacity :]
        with self.lock:
            end = self.position + len(batch)
            first = min(len(batch), self.capacity - self.position)
            self.rows[self.position : self.position + first] = batch[:first]
            self.rows[: len(batch) - first] = batch[first:]
            self.position = end % self.capacity
            self.seen += len(probabilities)

    def _sample(self, batch: np.ndarray) -> None:
        """Reservoir sampling (algorithm R): row n of the stream is kept with probability capacity / n."""
        assert self.reservoir is not None
        with self.lock:
            for row in batch:
                if self.seen < self.capacity:
                    self.rows[self.seen] = row
                else:
                    slot = int(self.reservoir.integers(0, self.seen + 1))
                    if slot < self.capacity:
                        self.rows[slot] = row
                self.seen += 1

    @property
    def due(self) -> bool:
        """Whether ``refresh`` answers came in since the last estimate."""
        return self.seen - self._estimated_at >= self.refresh

    def estimate(self) -> np.ndarray:
        """The current estimate, recomputed first when it is due."""
        if self.due or (self._estimated_at == 0 and self.seen):
            with self.lock:
                window, seen = self.rows[: min(self.seen, self.capacity)].copy(), self.seen
            self._estimate = estimate_prior(window, self.model.log_reference_prior)
            self._estimated_at = seen
        return self._estimate

    def adapted(self) -> np.ndarray | None:
        """Log-weights that correct answers toward the estimated prior, once ``min_samples`` answers are in."""
        if self.seen < self.min_samples:
            return None
        return self.correction.log_weights(self.estimate(), self.model.log_reference_prior)

    def report(self) -> dict[str, Any]:
        """The estimate and what it implies, as JSON-ready values."""
        estimated = self.estimate()
        reference = np.exp(self.model.log_reference_prior)
        weights = self.correction.log_weights(estimated, self.model.log_reference_prior)
        return {
            "samples": self.seen,
            "window": min(self.seen, self.capacity),
            "method": "EM (Saerens, Latinne and Decaestecker 2002) over the model's posteriors",
            "train_prior": self.model.train_prior.tolist(),
            "reference_prior": reference.tolist(),
            "reference_basis": self.model.reference_basis,
            "estimated_prior": estimated.tolist(),
            "total_variation": total_variation(estimated, self.model.train_prior),
            "total_variation_from_reference": total_variation(estimated, reference),
            "correction": {
                "weights": np.exp(weights).tolist(),
                "smoothing": self.correction.smoothing,
                "max_weight": self.correction.max_weight,
                "min_samples": self.min_samples,
                "ready": self.seen >= self.min_samples,
            },
        }
