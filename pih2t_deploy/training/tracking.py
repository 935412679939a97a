"""Experiment tracking: TensorBoard event files in the run folder (``RUN/tensorboard``; ``tensorboard --logdir
RUN``), one scalar per number an epoch's record holds (loss, learning rate, training accuracy, and the
validation and test scores with Many/Medium/Few and ECE when they were measured), and the run's final
test scores before and after the choices made on validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCORES = ("top1", "balanced", "many", "medium", "few", "ece")


class TensorBoardLog:
    """Writes a run's scalars; ``enabled=False`` (or a process other than rank 0) writes nothing."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(folder))

    def epoch(self, record: dict[str, Any]) -> None:
        """The scalars of one epoch's record (metrics.jsonl's line), at step = its epoch."""
        if self.writer is None:
            return
        stage, step = f"stage{record['stage']}", record["epoch"]
        for key in ("loss", "train_acc", "lr"):
            self.writer.add_scalar(f"{stage}/{key}", record[key], step)
        for split in ("val", "test"):
            for key, value in (record.get(split) or {}).items():
                if key in SCORES and value is not None:
                    self.writer.add_scalar(f"{stage}/{split}_{key}", value, step)
        self.writer.flush()

    def final(self, scores: dict[str, Any], prefix: str = "test") -> None:
        """The finished run's scores (step 0) under ``prefix``."""
        if self.writer is None:
            return
        for key in SCORES:
            if scores.get(key) is not None:
                self.writer.add_scalar(f"final/{prefix}_{key}", scores[key], 0)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
