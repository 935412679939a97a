"""Micro-batching: gather concurrent requests into one batch, run it in a worker thread, answer in order.

Requests wait in a bounded queue; a worker task takes up to ``max_batch`` images, waiting at most
``max_wait_ms`` for more after the first, runs ``predict`` in a worker thread (the event loop never blocks)
and resolves every request's future with its own rows. A model that runs several batches at once
(``parallel_batches``, e.g. OpenVINO's streams) gets that many in flight plus one more gathered ahead, which
waits for the first one to finish. A full queue raises QueueFullError at once; a request that has not been
answered within ``timeout_s`` raises RequestTimeoutError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pih2t_deploy.serving.errors import DeadlineExceeded, Unavailable

logger = logging.getLogger(__name__)


class QueueFullError(Unavailable):
    """The queue holds ``max_queue`` images already; the client should retry later."""


class RequestTimeoutError(DeadlineExceeded):
    """The request waited longer than its timeout."""


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Batches calls to ``predict`` (float32 [N, C, H, W] -> [N, K]) from many coroutines.

    A batch is held open up to ``max_wait_ms`` for more requests. The batcher also counts the requests on
    their way to it (callers wrap reading and decoding a request in ``arriving()``); with
    ``hold_for_arrivals`` a batch is held only while some are on their way, so a lone request runs at once;
    without it the batch always waits out the window.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        on_batch: Callable[[int], None] = lambda _size: None,
        hold_for_arrivals: bool = False,
        parallel_batches: int = 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or timeout_s <= 0 or parallel_batches < 1:
            raise ValueError("max_batch, max_queue and parallel_batches must be >= 1, max_wait_ms >= 0, timeout_s > 0")
        self.predict, self.on_batch, self.hold_for_arrivals = predict, on_batch, hold_for_arrivals
        self.on_the_way = 0  # requests being read or decoded, not yet submitted
        self.max_batch, self.max_wait, self.max_queue, self.timeout = (
            max_batch,
            max_wait_ms / 1000,
            max_queue,
            timeout_s,
        )
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.queued_images = 0
        # one batch gathered ahead of the running ones, so that a stream that finishes starts again at once
        # (docs/performance.md); a model that runs one batch at a time gathers the next once it is free
        self.in_flight = parallel_batches + 1 if parallel_batches > 1 else 1
        self.slots = asyncio.Semaphore(self.in_flight)
        self.running: set[asyncio.Task] = set()
        self.carried: _Pending | None = None  # a request that did not fit the last batch: it starts the next
        self.executor = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="pih2t-predict")
        self.worker: asyncio.Task | None = None
        self.restarts = 0
        self.stopping = False

    def start(self) -> None:
        """Start the worker task on the running event loop; should it ever end with an error, it is started
        again (and counted in ``restarts``), so queued and later requests are still answered."""
        self.worker = asyncio.get_running_loop().create_task(self._run())
        self.worker.add_done_callback(self._restart_after_failure)

    def _restart_after_failure(self, task: asyncio.Task) -> None:
        if self.stopping:
            return
        error = None if task.cancelled() else task.exception()
        logger.error("the inference worker stopped (%s); starting it again", error or "cancelled")
        self.restarts += 1
        self.start()

    @property
    def healthy(self) -> bool:
        """True while the worker task runs (readiness reports False in the moment between a failure and the
        restart)."""
        return self.worker is not None and not self.worker.done()

    async def stop(self) -> None:
        """Finish every queued request and every running batch, then stop the worker and its threads."""
        self.stopping = True
        while self.queued_images and self.worker and not self.worker.done():
            await asyncio.sleep(0.005)
        if self.worker:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        await asyncio.gather(*self.running)
        self.executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count a request as on its way to this batcher while its body is read and its images decoded."""
        self.on_the_way += 1
        try:
            yield
        finally:
            self.on_the_way -= 1

    @property
    def depth(self) -> int:
        """Images waiting in the queue."""
        return self.queued_images

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Logits for ``images`` (its own rows, in order), computed within some batch."""
        if self.queued_images + len(images) > self.max_queue:
            raise QueueFullError(f"the request queue is full ({self.max_queue} images); retry shortly")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queued_images += len(images)
        self.queue.put_nowait(_Pending(images, future))
        expire = loop.call_later(self.timeout, self._expire, future)
        try:
            return await future
        finally:
            expire.cancel()

    def _expire(self, future: asyncio.Future) -> None:
        """Fail ``future`` with RequestTimeoutError if it has no answer yet (the batch skips done ones)."""
        if not future.done():
            future.set_exception(RequestTimeoutError(f"no answer within {self.timeout:g} s"))

    async def _collect(self) -> list[_Pending]:
        first, self.carried = self.carried or await self.queue.get(), None
        batch, size = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            if self.queue.empty() and self.hold_for_arrivals and self.on_the_way == 0:
                break  # nothing queued and nothing on its way: waiting cannot fill the batch
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                )
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if size + len(item.images) > self.max_batch:
                self.carried = item
                break
            batch.append(item)
            size += len(item.images)
        return batch

    async def _run(self) -> None:
        while True:
            await self.slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self.slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self.running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.slots.release()

    async def _run_batch(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item.future.done()]
        self.queued_images -= sum(len(item.images) for item in batch)
        if not live:
            return
        loop = asyncio.get_running_loop()
        try:
            stacked = np.concatenate([item.images for item in live])
            logits = await loop.run_in_executor(self.executor, self.predict, stacked)
            self.on_batch(len(stacked))
        except Exception as exc:  # the failure belongs to these requests, not to the worker
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        offset = 0
        for item in live:
            rows = logits[offset : offset + len(item.images)]
            offset += len(item.images)
            if not item.future.done():
                item.future.set_result(rows)
