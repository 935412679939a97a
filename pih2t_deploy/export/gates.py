"""The checks an export passes before its artifact is written.

- ParityGate: the exported model against the unfolded PyTorch model, on random batches and on real images;
  the largest output difference within tolerance x max(1, largest |reference output|). INT8 has no tolerance:
  its differences are reported, and judged by accuracy instead.
- AccuracyGate (INT8 and bf16 only): on labelled images, the accuracy lost per group (top-1, Many, Medium,
  Few) within --max-group-drop points; on unlabelled images, top-1 agreement with the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.errors import VerificationError
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.export.verify import VerificationReport
from pih2t_deploy.export.wrappers import example_input

MIN_TOP1_AGREEMENT = 0.9


@dataclass(frozen=True)
class ParityGate:
    """Output parity of an export; ``tolerance`` None reports the differences without enforcing them."""

    format: str
    tolerance: float | None
    batch_sizes: tuple[int, ...]
    seed: int

    @classmethod
    def for_export(cls, options: ExportOptions) -> ParityGate:
        """Batches 1, 2 and --max-batch (or the static batch); the export's tolerance, none for INT8."""
        sizes = (options.static_batch,) if options.static_batch else tuple(sorted({1, 2, options.max_batch}))
        tolerance = None if options.quantized else options.parity_tolerance
        return cls(options.format, tolerance, sizes, options.seed)

    def random_batches(self, prep: Preprocessing, pixels: bool) -> list[np.ndarray]:
        """Seeded random inputs in the model's input form, one batch per size."""
        generator = torch.Generator().manual_seed(self.seed)
        return [example_input(prep, n, pixels, generator).numpy() for n in self.batch_sizes]

    def enforce(self, reports: list[VerificationReport]) -> None:
        """VerificationError (exit 1) naming the first report over tolerance."""
        failed = [r for r in reports if not r.passed]
        if failed:
            raise VerificationError(
                f"the {self.format} export differs from the PyTorch model by "
                f"{failed[0].max_abs_diff:.3g} (tolerance {failed[0].tolerance:.3g}); no artifact was written"
            )


@dataclass(frozen=True)
class AccuracyGate:
    """Accuracy kept by a reduced-precision export (``what``: "INT8 quantization" or "bf16 inference")."""

    what: str
    max_group_drop: float
    min_top1_agreement: float = MIN_TOP1_AGREEMENT

    @classmethod
    def for_export(cls, options: ExportOptions) -> AccuracyGate | None:
        """The gate for INT8 and bf16 exports; None for full-precision ones."""
        if not options.reduced_precision:
            return None
        return cls("INT8 quantization" if options.quantized else "bf16 inference", options.max_group_drop)

    def enforce(self, real_images: list[VerificationReport], accuracy: dict[str, Any]) -> None:
        """VerificationError when a group loses more than ``max_group_drop`` points (labelled images) or, with
        no labels, when top-1 agrees with the reference on fewer than ``min_top1_agreement`` of the images."""
        agreement = min((r.top1_agreement for report in real_images for r in report.results), default=1.0)
        if not accuracy and agreement < self.min_top1_agreement:
            raise VerificationError(
                f"{self.what}: top-1 agrees with PyTorch on only {agreement:.0%} of inputs "
                f"(need {self.min_top1_agreement:.0%}); no artifact was written"
            )
        worst = {k: v for k, v in accuracy.get("drop_points", {}).items() if v > self.max_group_drop}
        if worst:
            group, drop = max(worst.items(), key=lambda item: item[1])
            raise VerificationError(
                f"{self.what} costs {drop:.1f} points of accuracy on {group} "
                f"(limit --max-group-drop {self.max_group_drop:g}); no artifact was written"
            )
