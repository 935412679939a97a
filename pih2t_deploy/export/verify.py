"""Numerical verification of an exported model against the unfolded PI-H2T network in PyTorch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class ParityResult:
    """Agreement at one batch size."""

    batch: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    top5_agreement: float


@dataclass
class VerificationReport:
    """Parity at several batch sizes against a tolerance on the largest absolute logit difference."""

    source: str
    tolerance: float
    results: list[ParityResult]

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute logit difference over all batches."""
        return max(r.max_abs_diff for r in self.results)

    @property
    def passed(self) -> bool:
        """True when every batch is within tolerance."""
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        """A JSON-safe dict including ``passed`` and ``max_abs_diff``."""
        return {
            "source": self.source,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "results": [asdict(r) for r in self.results],
        }


def _topk_agreement(expected: np.ndarray, actual: np.ndarray, k: int) -> float:
    k = min(k, expected.shape[1])
    top_expected = np.argsort(-expected, axis=1)[:, :k]
    top_actual = np.argsort(-actual, axis=1)[:, :k]
    if k == 1:
        return float(np.mean(top_expected[:, 0] == top_actual[:, 0]))
    same = [set(a) == set(b) for a, b in zip(top_expected, top_actual, strict=True)]
    return float(np.mean(same))


def compare(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float, float, float]:
    """(max abs diff, max abs diff / max |expected|, top-1 agreement, top-5 set agreement)."""
    expected = expected.astype(np.float64)
    actual = actual.astype(np.float64)
    max_abs = float(np.abs(expected - actual).max())
    max_rel = max_abs / max(float(np.abs(expected).max()), 1e-12)
    return max_abs, max_rel, _topk_agreement(expected, actual, 1), _topk_agreement(expected, actual, 5)


@torch.no_grad()
def verify_against(
    reference: nn.Module,
    runner: Runner,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 2, 8),
    adjustment: np.ndarray | None = None,
    tolerance: float = 1e-3,
    seed: int = 0,
    inputs: np.ndarray | None = None,
    source: str = "random",
) -> VerificationReport:
    """Run ``runner`` and ``reference`` (eval mode) on the same inputs at each batch size and compare logits.

    ``adjustment`` (per-class, subtracted from the reference's logits) accounts for folded logit adjustment.
    With ``inputs`` the batches are slices of those real images; otherwise seeded standard-normal tensors.
    """
    reference = reference.eval()
    rng = np.random.default_rng(seed)
    results = []
    for batch in batch_sizes:
        if inputs is not None:
            x = inputs[:batch].astype(np.float32)
        else:
            x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        expected = reference(torch.from_numpy(x)).double().numpy()
        if adjustment is not None:
            expected = expected - adjustment
        results.append(ParityResult(len(x), *compare(expected, runner(x))))
    return VerificationReport(source=source, tolerance=tolerance, results=results)
