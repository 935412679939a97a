"""``--log-low-confidence DIR``: a bounded, rotating sample of the inputs the model was unsure about.

Every answered image whose top-1 probability is below the threshold is written to DIR as the bytes the client
sent (an encoded image; a tensor input as ``.npy``) beside a ``.json`` record (time, top-5 labels and
probabilities, the Many/Medium/Few group of the top-1 class), named ``<time>-<group>-<sequence>`` so the folder
sorts by age and can be filtered by group for review and relabelling. At most ``keep`` samples are kept: the
oldest are removed as new ones arrive. Writing happens on one background thread, never on the event loop, and
a full disk or a removed folder only costs the sample (logged, rate-limited), never an answer.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pih2t_deploy.atomic import require_writable_folder
from pih2t_deploy.data.images import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

MAX_SAMPLE_BYTES = 16 << 20  # larger inputs are recorded without their bytes
SAMPLE = re.compile(r"\d{8}-\d{6}-[a-z]+-\d{6}")


class LowConfidenceLog:
    """Writes samples below ``threshold`` into ``folder``, keeping the newest ``keep``."""

    def __init__(self, folder: Path, threshold: float, keep: int) -> None:
        require_writable_folder(folder, f"--log-low-confidence {folder}")
        self.folder, self.threshold, self.keep = Path(folder), threshold, keep
        # samples an earlier run kept count toward the limit; any other file in the folder is never touched
        self.kept: deque[str] = deque(sorted(p.stem for p in self.folder.glob("*.json") if SAMPLE.fullmatch(p.stem)))
        self.sequence = 0
        self.lock = threading.Lock()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="pih2t-low-confidence")

    def offer(
        self, inputs: list[bytes | np.ndarray], probabilities: np.ndarray, labels: list[str], groups: list[str]
    ) -> int:
        """Queue the samples of one request whose top-1 probability is below the threshold; returns how many."""
        top = probabilities.max(axis=1)
        chosen = [i for i in range(len(top)) if top[i] < self.threshold]
        for index in chosen:
            order = np.argsort(-probabilities[index], kind="stable")[:5]
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "group": groups[int(order[0])] if groups else None,
                "top": [
                    {"label": labels[int(c)], "index": int(c), "score": float(probabilities[index, c])} for c in order
                ],
            }
            self.writer.submit(self._write, inputs[index], record)
        return len(chosen)

    def _write(self, data: bytes | np.ndarray, record: dict) -> None:
        with self.lock:
            self.sequence += 1
            stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{record['group'] or 'unknown'}-{self.sequence:06d}"
        try:
            if isinstance(data, np.ndarray):
                buffer = io.BytesIO()
                np.save(buffer, data, allow_pickle=False)
                payload, suffix = buffer.getvalue(), ".npy"
            else:
                payload, suffix = bytes(data), _suffix(bytes(data))
            if len(payload) <= MAX_SAMPLE_BYTES:
                (self.folder / f"{stem}{suffix}").write_bytes(payload)
                record["input"] = f"{stem}{suffix}"
            (self.folder / f"{stem}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
        except OSError as exc:
            logger.warning("could not keep a low-confidence sample in %s: %s", self.folder, exc.strerror or exc)
            return
        self.kept.append(stem)
        while len(self.kept) > self.keep:
            old = self.kept.popleft()
            for path in self.folder.glob(f"{old}.*"):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the queued writes."""
        self.writer.shutdown(wait=True)


def _suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their signature (``.bin`` when unknown)."""
    signatures = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}
    for start, suffix in signatures.items():
        if data.startswith(start) and suffix in IMAGE_SUFFIXES:
            return suffix
    return ".tif" if data[:4] in (b"II*\x00", b"MM\x00*") else ".bin"
