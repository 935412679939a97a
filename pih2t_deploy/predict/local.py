"""The single-machine pipeline: decode images in a thread pool while the model runs, in bounded memory.

Decoding (file read, PIL decode, resize, normalise) runs ahead of inference in ``workers`` threads, in groups
of a few images and a bounded number of groups ahead, so memory stays constant however many images there
are; the model gets one batch at a time; rows come out in input order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pih2t_deploy.data.label_shift import PriorWatch
from pih2t_deploy.errors import ConfigError
from pih2t_deploy.predict.inputs import InputItem, Inputs, resolve_inputs
from pih2t_deploy.predict.rows import Decoded, PredictionRow, RowMaker, decode_many
from pih2t_deploy.runtime.classifier import Classifier
from pih2t_deploy.runtime.loader import load_classifier

DECODE_GROUP = 8  # images per decoding task: fewer hand-offs between threads, one preprocessing call per group


def predict_images(
    model: str | Path | Classifier,
    source: str | Path | Inputs | Iterable[InputItem],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    backend: str = "onnxruntime",
    threads: int | None = None,
    workers: int | None = None,
) -> Iterator[PredictionRow]:
    """Rows for every image of ``source`` (a folder, glob, list file, image, or InputItems), in order.

    ``model`` is an artifact folder (loaded with ``backend`` and ``threads``) or a loaded Classifier. The
    model is loaded and the source resolved before this returns, so bad arguments raise here (UserError);
    an unreadable or undecodable image never raises: its row carries ``error``. Example::

        for row in predict_images("exports/digits-lt", "photos/"):
            print(row.path, row.labels[0] if not row.error else row.error)
    """
    if batch_size < 1 or top_k < 1:
        raise ConfigError(f"batch_size and top_k must be at least 1, got {batch_size} and {top_k}")
    classifier = model if isinstance(model, Classifier) else load_classifier(model, backend, threads=threads)
    items = resolve_inputs(str(source), classifier.info.labels) if isinstance(source, str | Path) else source
    return stream_rows(classifier, items, top_k=top_k, batch_size=batch_size, workers=workers)


def stream_rows(
    classifier: Classifier,
    items: Iterable[InputItem],
    *,
    top_k: int,
    batch_size: int,
    workers: int | None = None,
    shift: np.ndarray | None = None,
    watch: PriorWatch | None = None,
) -> Iterator[PredictionRow]:
    """PredictionRows for ``items`` in order, decoding ahead in a bounded thread pool (``shift`` and ``watch``
    as for RowMaker)."""
    maker = RowMaker(classifier, top_k, shift, watch)
    chunk: list[tuple[InputItem, Decoded]] = []
    for pair in _decoded_in_order(classifier, items, batch_size, workers or os.cpu_count() or 2):
        chunk.append(pair)
        if len(chunk) == batch_size:
            yield from maker.classify_chunk([item for item, _ in chunk], [value for _, value in chunk])
            chunk = []
    if chunk:
        yield from maker.classify_chunk([item for item, _ in chunk], [value for _, value in chunk])


def _groups(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    group: list[InputItem] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _decoded_in_order(
    classifier: Classifier, items: Iterable[InputItem], batch_size: int, workers: int
) -> Iterator[tuple[InputItem, Decoded]]:
    """(item, decoded) in input order; each decoding task takes DECODE_GROUP images, at most
    ``2 x batch_size + workers x DECODE_GROUP`` images are in flight."""
    window = max(2, (2 * batch_size) // DECODE_GROUP + workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pih2t-decode")
    pending: deque[tuple[list[InputItem], Future[list[Decoded]]]] = deque()
    try:
        for group in _groups(items, DECODE_GROUP):
            pending.append((group, pool.submit(decode_many, classifier, [item.path for item in group])))
            if len(pending) >= window:
                first, future = pending.popleft()
                yield from zip(first, future.result(), strict=True)
        while pending:
            first, future = pending.popleft()
            yield from zip(first, future.result(), strict=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
