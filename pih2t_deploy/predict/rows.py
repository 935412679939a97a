"""One result row per image, and the per-batch step that makes them: decode, run the model, take the top k.

The same ``decode_many`` and ``classify_chunk`` run in the single-machine pipeline and in each Ray actor, so both
engines give the same rows for the same images.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pih2t_deploy.data.images import open_image
from pih2t_deploy.data.label_shift import PriorWatch
from pih2t_deploy.data.longtail import GroupThresholds, softmax, top_k
from pih2t_deploy.errors import DataError
from pih2t_deploy.predict.inputs import InputItem
from pih2t_deploy.runtime.classifier import Classifier

MAX_FILE_BYTES = 256 * 1024 * 1024  # larger "images" are refused before reading (the pixel limit follows)


@dataclass(frozen=True)
class PredictionRow:
    """The result for one image: the top-k class names, indices and probabilities (best first), the
    Many/Medium/Few group of the top-1 class, the true label when the input gives one, or, for a file that
    could not be classified, ``error`` (one line) and empty predictions."""

    path: str
    labels: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    group: str | None = None
    true_label: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the JSONL / Parquet record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictionRow:
        """From a record written by ``to_dict`` (JSONL, CSV after decoding, Parquet)."""
        return cls(
            path=str(data["path"]),
            labels=[str(x) for x in data.get("labels") or []],
            indices=[int(x) for x in data.get("indices") or []],
            scores=[float(x) for x in data.get("scores") or []],
            group=data.get("group") or None,
            true_label=data.get("true_label") or None,
            error=data.get("error") or None,
        )


Decoded = np.ndarray | str  # the model input for one image, or the reason it has none


def read_regular_file(path: str, limit: int | None = None) -> bytes | str:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes, else a one-line reason.

    Opened without blocking (a FIFO cannot stall the job) and checked on the open descriptor, so a device
    such as /dev/zero, a FIFO or a folder is never read, whatever its name, and a file that grows while it
    is read stops at ``limit`` (default MAX_FILE_BYTES)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file (a device, FIFO, socket or folder); only image files are read"
        if info.st_size > limit:
            return f"the file is {info.st_size:,} bytes; the limit is {limit:,}"
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return f"the file grew past the limit of {limit:,} bytes while it was read"
        return b"".join(chunks)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    finally:
        os.close(fd)


def _open(path: str) -> Image.Image | str:
    data = read_regular_file(path)
    if isinstance(data, str):
        return data
    try:
        return open_image(data, name=os.path.basename(path))
    except DataError as exc:
        return str(exc)


def decode_many(classifier: Classifier, paths: list[str]) -> list[Decoded]:
    """The model input for each image (its artifact's preprocessing, applied to the decodable ones together),
    or a one-line error for each file that cannot be read or decoded."""
    opened = [_open(path) for path in paths]
    good = [i for i, value in enumerate(opened) if not isinstance(value, str)]
    out: list[Decoded] = list(opened)  # type: ignore[arg-type]
    if good:
        prepared = classifier.prepare([opened[i] for i in good])
        for row, index in enumerate(good):
            out[index] = prepared[row]
    return out


class RowMaker:
    """Turns a classifier's outputs into PredictionRows (top-k, group of the top-1 class). With ``shift`` the
    logits are shifted by it first (a job's tau / prior, ``predict.priors``); with ``watch`` the model's own
    posteriors are recorded for the job's label-shift estimate."""

    def __init__(
        self, classifier: Classifier, top_k: int, shift: np.ndarray | None = None, watch: PriorWatch | None = None
    ) -> None:
        info = classifier.info
        self.shift, self.watch = shift, watch
        self.classifier, self.labels = classifier, info.labels
        self.top_k = max(1, min(top_k, info.num_classes))
        thresholds = GroupThresholds.from_meta(info.meta)
        counts = info.class_counts
        self.groups = thresholds.groups(counts) if counts and len(counts) == info.num_classes else None

    def classify_chunk(self, items: list[InputItem], decoded: list[Decoded]) -> list[PredictionRow]:
        """Rows for ``items`` in order: one model call for every decoded image, an error row for the others."""
        good = [i for i, value in enumerate(decoded) if not isinstance(value, str)]
        rows: dict[int, PredictionRow] = {}
        if good:
            batch = np.stack([decoded[i] for i in good])
            probabilities = self.classifier.probabilities(self.classifier.predict(batch))
            if self.watch is not None:
                self.watch.add(probabilities)
            if self.shift is not None:
                probabilities = softmax(np.log(np.maximum(probabilities, 1e-300)) + self.shift)
            order = top_k(probabilities, self.top_k)
            for row_index, item_index in enumerate(good):
                indices = [int(c) for c in order[row_index]]
                rows[item_index] = PredictionRow(
                    path=items[item_index].path,
                    labels=[self.labels[c] for c in indices],
                    indices=indices,
                    scores=[float(probabilities[row_index, c]) for c in indices],
                    group=self.groups[indices[0]] if self.groups else None,
                    true_label=items[item_index].true_label,
                )
        return [
            rows.get(i) or PredictionRow(path=item.path, true_label=item.true_label, error=str(decoded[i]))
            for i, item in enumerate(items)
        ]
