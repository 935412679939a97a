"""A prediction run into a result file on this machine: resume, progress, interruption, final report.

Rows are written after every batch; Ctrl-C or an exception keeps every row already computed (a Parquet run
keeps them in its journal), and the same command with ``--resume`` skips the images the output holds. At the
end the whole output is summarised into ``<output stem>.summary.json`` beside it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from pih2t_deploy.atomic import write_text_atomic
from pih2t_deploy.data.label_shift import PriorWatch
from pih2t_deploy.predict.inputs import InputItem, Inputs, resolve_inputs
from pih2t_deploy.predict.local import stream_rows
from pih2t_deploy.predict.priors import JobPrior
from pih2t_deploy.predict.report import summarize_rows
from pih2t_deploy.predict.rows import PredictionRow
from pih2t_deploy.predict.writers import RowWriter, open_writer
from pih2t_deploy.runtime.classifier import Classifier, ModelInfo
from pih2t_deploy.runtime.loader import load_classifier

logger = logging.getLogger(__name__)

EXIT_SOME_ERRORS = 3


@dataclass
class PredictResult:
    """What a run did: rows written now, images skipped as already done, and the whole output's summary."""

    output: Path
    summary_path: Path
    written: int
    skipped: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every image of the output was classified, 3 when some rows are errors."""
        return EXIT_SOME_ERRORS if self.summary.get("errors") else 0


class RateColumn(ProgressColumn):
    """Images per second of the task."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} images/s")


def progress_bar(enabled: bool) -> Progress:
    """A progress display for an unknown number of images: count, rate, elapsed time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} images"),
        RateColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def summary_path(output: Path) -> Path:
    """``preds.jsonl`` -> ``preds.summary.json`` (a Ray output folder ``preds`` -> ``preds.summary.json``)."""
    return output.with_name(output.stem + ".summary.json")


def finish_run(
    output: Path,
    rows: Iterable[PredictionRow],
    info: ModelInfo,
    *,
    inputs: Inputs,
    written: int,
    skipped: int,
    seconds: float,
    engine: dict[str, Any],
) -> PredictResult:
    """Summarise ``rows`` (the whole output) with what this run did (``engine``: how it ran) and write the
    summary atomically beside the output; the same record for every engine."""
    summary = {
        **engine,
        "input": {"kind": inputs.kind, "source": inputs.source, "labelled": inputs.labelled},
        "output": str(output),
        "written_now": written,
        "skipped_already_done": skipped,
        "seconds": round(seconds, 3),
        "images_per_second": round(written / seconds, 2) if seconds > 0 else None,
        **summarize_rows(rows, info),
    }
    write_text_atomic(summary_path(output), json.dumps(summary, indent=2) + "\n")
    return PredictResult(output, summary_path(output), written, skipped, seconds, summary)


def _estimate_first(
    classifier: Classifier,
    inputs: Inputs,
    watch: PriorWatch,
    batch_size: int,
    workers: int | None,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Pass 1 of ``--adapt-prior``: the model over every input, only to estimate their prior; the shift that
    corrects for it and its description (nothing when no image could be classified)."""
    log("pass 1 of 2: estimating the class prior of every input")
    with progress_bar(progress) as bar:
        task = bar.add_task("estimating the class prior", total=None)
        rows = stream_rows(classifier, inputs, top_k=1, batch_size=batch_size, workers=workers, watch=watch)
        for index, _ in enumerate(rows):
            bar.update(task, completed=index + 1)
    shift = watch.adapted()
    log("pass 2 of 2: classifying with the estimated prior")
    if shift is None:
        return None, {}
    return shift, {"prior": "adapted", "weights": [round(float(w), 6) for w in np.exp(shift)]}


class _Tally:
    """Rows waiting to be written and rows written. ``flush`` hands the waiting rows over before writing them,
    so an interruption in the middle of a write never writes them twice (a half-written last row is cut off
    when the run resumes)."""

    def __init__(self) -> None:
        self.buffer: list[PredictionRow] = []
        self.written = 0

    def flush(self, writer: RowWriter) -> None:
        batch, self.buffer = self.buffer, []
        writer.write(batch)
        self.written += len(batch)


class _Skipping:
    """Items of an input that the output does not hold yet, counting the ones it does."""

    def __init__(self, items: Iterable[InputItem], done: set[str]) -> None:
        self.items, self.done, self.skipped = items, done, 0

    def __iter__(self) -> Iterator[InputItem]:
        for item in self.items:
            if item.path in self.done:
                self.skipped += 1
            else:
                yield item


def run_local(
    model: str | Path,
    source: str | Inputs,
    output: Path,
    *,
    top_k: int = 5,
    batch_size: int = 64,
    backend: str = "onnxruntime",
    threads: int | None = None,
    workers: int | None = None,
    resume: bool = False,
    progress: bool = True,
    tau: float | None = None,
    prior: Path | None = None,
    adapt_prior: bool = False,
    log: Callable[[str], None] = logger.info,
) -> PredictResult:
    """Classify every image of ``source`` into ``output`` (.jsonl, .csv or .parquet) and summarise it.

    ``tau`` / ``prior`` shift every row's logits as a model folded with them would (``predict.priors``);
    the summary reports the label-shift estimate of the images classified; ``adapt_prior`` first runs the
    model over every input to estimate it, then scores the job with that correction (twice the model time).
    """
    classifier = load_classifier(model, backend, threads=threads)
    job = JobPrior.for_job(classifier.info, tau, prior, adapt_prior)
    inputs = resolve_inputs(source, classifier.info.labels) if isinstance(source, str) else source
    writer = open_writer(output, resume=resume)
    shift, watch, described = job.shift, job.watch(), dict(job.described)
    if adapt_prior and watch is not None:
        shift, described = _estimate_first(classifier, inputs, watch, batch_size, workers, progress, log)
    pending = _Skipping(inputs, writer.done)
    started, rows_kept = time.perf_counter(), _Tally()
    in_pass = None if adapt_prior else watch
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"{inputs.kind} {inputs.source}", total=None)
            rows = stream_rows(
                classifier, pending, top_k=top_k, batch_size=batch_size, workers=workers, shift=shift, watch=in_pass
            )
            for row in rows:
                rows_kept.buffer.append(row)
                if len(rows_kept.buffer) == batch_size:
                    rows_kept.flush(writer)
                    bar.update(task, completed=rows_kept.written)
            rows_kept.flush(writer)
            bar.update(task, completed=rows_kept.written)
    except BaseException:
        rows_kept.flush(writer)
        writer.close()
        log(f"stopped: {rows_kept.written} new rows are kept; run the same command with --resume to continue")
        raise
    writer.finish()
    seconds = time.perf_counter() - started
    engine: dict[str, Any] = {"model": str(model), "backend": classifier.backend}
    if described:
        engine["prior"] = described
    if watch is not None and watch.seen:
        engine["label_shift"] = {**watch.report(), "images": "every input" if adapt_prior else "classified in this run"}
    return finish_run(
        output, writer.rows(), classifier.info, inputs=inputs, written=rows_kept.written, skipped=pending.skipped,
        seconds=seconds, engine=engine,
    )  # fmt: skip
