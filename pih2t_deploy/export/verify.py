"""Numerical verification of an exported model against the unfolded PI-H2T network in PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pih2t_deploy.data.longtail import top_k
from pih2t_deploy.export.runners import Runner


@dataclass
class ParityResult:
    """Agreement on one batch (or on a whole real-image set, then ``batch`` is its size)."""

    batch: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    top5_agreement: float
    reference_scale: float = 1.0


@dataclass
class VerificationReport:
    """Parity on several batches; ``tolerance`` None means the numbers are reported, not enforced."""

    source: str
    tolerance: float | None
    results: list[ParityResult]

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute output difference over all batches."""
        return max(r.max_abs_diff for r in self.results)

    @property
    def passed(self) -> bool:
        """True when every batch is within tolerance * max(1, largest |reference output|): absolute for
        outputs up to 1, relative above (float32 keeps relative precision). Always, when none is enforced."""
        tolerance = self.tolerance
        return tolerance is None or all(r.max_abs_diff <= tolerance * max(1.0, r.reference_scale) for r in self.results)

    def to_dict(self) -> dict:
        """A JSON-safe dict including ``max_abs_diff``, whether the parity is ``gated`` (a tolerance applies)
        and, when it is, ``passed`` (None when the numbers are only reported, e.g. INT8's, judged on accuracy)."""
        gated = self.tolerance is not None
        return {
            "source": self.source,
            "tolerance": self.tolerance,
            "gated": gated,
            "passed": self.passed if gated else None,
            "max_abs_diff": self.max_abs_diff,
            "results": [asdict(r) for r in self.results],
        }


def _topk_agreement(expected: np.ndarray, actual: np.ndarray, k: int) -> float:
    k = min(k, expected.shape[1])
    top_expected, top_actual = top_k(expected, k), top_k(actual, k)
    if k == 1:
        return float(np.mean(top_expected[:, 0] == top_actual[:, 0]))
    return float(np.mean([set(a) == set(b) for a, b in zip(top_expected, top_actual, strict=True)]))


def compare(expected: np.ndarray, actual: np.ndarray, batch: int | None = None) -> ParityResult:
    """Max abs diff, max abs diff / max |expected|, top-1 agreement and top-5 set agreement."""
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    if expected.shape != actual.shape:
        raise ValueError(f"output shapes differ: {expected.shape} vs {actual.shape}")
    max_abs = float(np.abs(expected - actual).max())
    scale = float(np.abs(expected).max())
    return ParityResult(
        batch or len(expected),
        max_abs,
        max_abs / max(scale, 1e-12),
        _topk_agreement(expected, actual, 1),
        _topk_agreement(expected, actual, 5),
        scale,
    )


def verify(
    reference: Runner, candidate: Runner, batches: list[np.ndarray], tolerance: float | None, source: str
) -> VerificationReport:
    """Compare ``candidate`` with ``reference`` on each batch."""
    return VerificationReport(source, tolerance, [compare(reference(b), candidate(b)) for b in batches])
