"""Post-hoc choices made on the validation set and folded into the classifier at export: the logit-adjustment
strength tau and a temperature T.

tau is searched on a grid for the highest balanced accuracy (the mean of per-class recalls: on long-tailed
data plain accuracy rewards ignoring the tail), ties going to the smaller tau. T then minimises the negative
log-likelihood of softmax((z - tau log p_train) / T) on the same images (temperature scaling, Guo et al.
2017); the NLL is convex in 1/T, so a golden-section search over 1/T finds it. Neither changes which class wins
except through tau; T only changes how confident the probabilities are. Both fold exactly into the final
Linear layer (``fold.fold``), so serving them costs nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pih2t_deploy.data.longtail import log_prior, softmax
from pih2t_deploy.evaluation import expected_calibration_error

TAU_GRID = tuple(round(0.1 * step, 1) for step in range(31))  # 0.0, 0.1, ..., 3.0
OBJECTIVE = "balanced accuracy"
INVERSE_TEMPERATURE_RANGE = (0.05, 20.0)


def balanced_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """The mean over the classes present in ``targets`` of the fraction of their images predicted right."""
    predicted = logits.argmax(axis=1)
    recalls = [float((predicted[targets == c] == c).mean()) for c in np.unique(targets)]
    return float(np.mean(recalls))


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean -log softmax(logits)[target]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def choose_tau(logits: np.ndarray, targets: np.ndarray, log_train_prior: np.ndarray) -> tuple[float, float]:
    """(tau, its balanced accuracy): the TAU_GRID value whose adjusted logits z - tau log p_train score the
    highest balanced accuracy; the smallest such tau."""
    scores = [balanced_accuracy(logits - tau * log_train_prior, targets) for tau in TAU_GRID]
    best = int(np.argmax(scores))  # the first maximum: the smallest tau
    return TAU_GRID[best], scores[best]


def fit_temperature(logits: np.ndarray, targets: np.ndarray, iterations: int = 60) -> float:
    """The temperature T minimising the NLL of softmax(logits / T): golden-section search over 1/T."""
    low, high = INVERSE_TEMPERATURE_RANGE
    ratio = (math.sqrt(5) - 1) / 2

    def nll(inverse: float) -> float:
        return negative_log_likelihood(logits * inverse, targets)

    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(iterations):
        if nll(c) < nll(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return 1.0 / ((a + b) / 2)


@dataclass(frozen=True)
class PosthocChoice:
    """The chosen tau and temperature with what they did on validation."""

    tau: float
    temperature: float
    objective: str
    val_images: int
    val_balanced_accuracy_before: float
    val_balanced_accuracy_after: float
    val_ece_before: float
    val_ece_after: float
    val_nll_before: float
    val_nll_after: float
    temperature_at_bound: bool = False  # the NLL kept falling to the search's edge: T is not well determined

    def describe(self) -> str:
        """One line for the training log."""
        line = (
            f"chosen on validation ({self.val_images} images): logit-adjust tau {self.tau:g} ({self.objective} "
            f"{100 * self.val_balanced_accuracy_before:.1f} -> {100 * self.val_balanced_accuracy_after:.1f}), "
            f"temperature {self.temperature:.3f} (ECE {self.val_ece_before:.3f} -> {self.val_ece_after:.3f})"
        )
        if self.temperature_at_bound:
            line += (
                "; the temperature is at the edge of its search range: the validation images are separated "
                "(nearly) perfectly, so it is not well determined (--temperature 1 at export keeps the raw scale)"
            )
        return line

    def apply(self, logits: np.ndarray, class_counts: Sequence[int]) -> np.ndarray:
        """``logits`` as the folded classifier gives them: (z - tau log p_train) / T."""
        return (logits - self.tau * log_prior(class_counts)) / self.temperature

    def to_dict(self) -> dict[str, Any]:
        """JSON- and weights_only-safe dict."""
        return asdict(self)


def choose_posthoc(logits: np.ndarray, targets: np.ndarray, class_counts: Sequence[int]) -> PosthocChoice:
    """tau for the highest balanced accuracy, then the temperature minimising NLL, on validation ``logits``."""
    logits = np.asarray(logits, dtype=np.float64)
    tau, balanced_after = choose_tau(logits, targets, log_prior(class_counts))
    adjusted = logits - tau * log_prior(class_counts)
    temperature = fit_temperature(adjusted, targets)
    calibrated = adjusted / temperature
    low, high = INVERSE_TEMPERATURE_RANGE
    at_bound = min(abs(1 / temperature - low), abs(1 / temperature - high)) < 1e-3 * high
    return PosthocChoice(
        tau=tau,
        temperature=round(temperature, 6),
        objective=OBJECTIVE,
        val_images=len(targets),
        val_balanced_accuracy_before=balanced_accuracy(logits, targets),
        val_balanced_accuracy_after=balanced_after,
        val_ece_before=expected_calibration_error(softmax(logits), targets),
        val_ece_after=expected_calibration_error(softmax(calibrated), targets),
        val_nll_before=negative_log_likelihood(logits, targets),
        val_nll_after=negative_log_likelihood(calibrated, targets),
        temperature_at_bound=at_bound,
    )


def reliability_diagram(before: np.ndarray, after: np.ndarray, targets: np.ndarray, path: Path, bins: int = 15) -> Path:
    """PNG: accuracy against confidence in ``bins`` equal-width bins, for the probabilities ``before`` and
    ``after`` calibration, with the diagonal a calibrated model follows and each curve's ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for probs, label in ((before, "before"), (after, "after (tau, temperature)")):
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == targets
        xs, ys = [], []
        for low, high in itertools.pairwise(edges):
            inside = (confidence > low) & (confidence <= high)
            if inside.any():
                xs.append(float(confidence[inside].mean()))
                ys.append(float(correct[inside].mean()))
        ece = expected_calibration_error(probs, targets, bins)
        ax.plot(xs, ys, marker="o", label=f"{label}: ECE {ece:.3f}")
    ax.set(xlabel="confidence (top-1 probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Reliability on the test set")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
