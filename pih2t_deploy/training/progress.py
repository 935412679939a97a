"""Progress display for training epochs: a rich progress bar with loss and accuracy (rank 0 only)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def epoch_progress(enabled: bool, accuracy_label: str = "acc") -> Progress:
    """A Progress whose task fields ``loss`` and ``acc`` are shown beside the bar, the accuracy under
    ``accuracy_label`` (``mixup acc`` where each prediction is scored against both mixed labels)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} " + accuracy_label + " {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
