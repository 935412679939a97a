"""The micro-batcher's worker survives what goes wrong inside it: an error in a batch reaches that batch's
requests (not a hang until the 504), and a worker task that ends anyway is started again, so a ready server
never answers 504 forever."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from pih2t_deploy.serving.batcher import MicroBatcher, QueueFullError, RequestTimeoutError


def _predict(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(len(batch), -1)[:, :2] * 2.0


def test_an_error_after_inference_fails_that_batch_and_the_next_request_is_answered():
    calls = []

    def on_batch(size: int) -> None:
        calls.append(size)
        if len(calls) == 1:
            raise RuntimeError("metrics backend down")

    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(_predict, max_wait_ms=0, timeout_s=5, on_batch=on_batch)
        batcher.start()
        with pytest.raises(RuntimeError, match="metrics backend down"):
            await batcher.submit(np.ones((1, 1, 2, 2), dtype=np.float32))
        answer = await batcher.submit(np.full((1, 1, 2, 2), 3.0, dtype=np.float32))
        assert batcher.healthy and batcher.restarts == 0
        await batcher.stop()
        return answer

    np.testing.assert_array_equal(asyncio.run(scenario()), [[6.0, 6.0]])


def test_a_worker_that_ends_is_started_again_and_answers():
    async def scenario() -> tuple[np.ndarray, int]:
        batcher = MicroBatcher(_predict, max_wait_ms=0, timeout_s=5)
        batcher.start()
        first = batcher.worker
        first.cancel()  # the worker task ends for a reason nobody planned
        await asyncio.sleep(0.01)
        assert first.done() and batcher.worker is not first and batcher.healthy
        answer = await batcher.submit(np.full((2, 1, 2, 2), 1.5, dtype=np.float32))
        restarts = batcher.restarts
        await batcher.stop()
        assert not batcher.healthy and batcher.restarts == restarts, "a stop is not a failure to restart from"
        return answer, restarts

    answer, restarts = asyncio.run(scenario())
    np.testing.assert_array_equal(answer, [[3.0, 3.0], [3.0, 3.0]])
    assert restarts == 1


@pytest.mark.parametrize(
    "bad",
    [{"max_batch": 0}, {"max_queue": 0}, {"max_wait_ms": -0.5}, {"timeout_s": 0.0}, {"parallel_batches": 0}],
    ids=lambda b: next(iter(b)),
)
def test_each_bad_setting_alone_is_refused(bad):
    message = r"^max_batch, max_queue and parallel_batches must be >= 1, max_wait_ms >= 0, timeout_s > 0$"
    with pytest.raises(ValueError, match=message):
        MicroBatcher(_predict, **bad)


def test_the_smallest_settings_and_the_defaults():
    smallest = MicroBatcher(_predict, max_batch=1, max_queue=1, max_wait_ms=0, timeout_s=0.001)
    assert (smallest.max_batch, smallest.max_queue, smallest.max_wait, smallest.timeout) == (1, 1, 0, 0.001)
    default = MicroBatcher(_predict)
    assert (default.max_batch, default.max_wait, default.max_queue, default.timeout) == (32, 0.005, 256, 30.0)


def test_every_restart_is_counted_and_logged_with_its_cause(caplog):
    async def scenario() -> int:
        batcher = MicroBatcher(_predict, max_wait_ms=0, timeout_s=5)
        batcher.start()
        for _ in range(2):
            batcher.worker.cancel()
            await asyncio.sleep(0.01)
        restarts = batcher.restarts
        await batcher.stop()
        return restarts

    with caplog.at_level("ERROR", logger="pih2t_deploy.serving.batcher"):
        assert asyncio.run(scenario()) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "the inference worker stopped (cancelled); starting it again"
    ] * 2


def test_stop_answers_the_requests_already_queued_before_it_returns():
    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(_predict, max_batch=1, max_wait_ms=0, timeout_s=5)
        batcher.start()
        waiting = [
            asyncio.ensure_future(batcher.submit(np.full((1, 1, 2, 2), v, dtype=np.float32))) for v in (1.0, 2.0, 3.0)
        ]
        await asyncio.sleep(0)  # the three are queued
        await batcher.stop()
        assert all(w.done() for w in waiting), "stop returned while requests were still queued"
        return [w.result() for w in waiting]

    assert [a.tolist() for a in asyncio.run(scenario())] == [[[2.0, 2.0]], [[4.0, 4.0]], [[6.0, 6.0]]]


def test_a_batch_waits_only_for_requests_on_their_way():
    """With a one-minute window: a lone request (nothing queued, nothing on its way) runs at once; while
    another request is on its way (being read or decoded) the batch stays open and both run together."""
    sizes: list[int] = []

    async def scenario() -> None:
        batcher = MicroBatcher(
            _predict, max_wait_ms=60_000, timeout_s=120, on_batch=sizes.append, hold_for_arrivals=True
        )
        batcher.start()
        lone = await asyncio.wait_for(batcher.submit(np.ones((1, 1, 2, 2), dtype=np.float32)), 10)
        np.testing.assert_array_equal(lone, [[2.0, 2.0]])
        with batcher.arriving():
            assert batcher.on_the_way == 1
            first = asyncio.ensure_future(batcher.submit(np.ones((2, 1, 2, 2), dtype=np.float32)))
            await asyncio.sleep(0.05)
            assert not first.done(), "the batch ran although a request was on its way"
        assert batcher.on_the_way == 0
        second = await asyncio.wait_for(batcher.submit(np.ones((1, 1, 2, 2), dtype=np.float32)), 10)
        assert (await first).shape == (2, 2) and second.shape == (1, 2)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [1, 3]


def _images(count: int, value: float = 1.0) -> np.ndarray:
    return np.full((count, 1, 2, 2), value, dtype=np.float32)


class Gate:
    """A predict function that holds each call until ``release``; ``entered`` is set once a call waits."""

    def __init__(self) -> None:
        self.entered, self.released = threading.Event(), threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.released.wait(10)
        return _predict(batch)

    def release(self) -> None:
        self.released.set()


async def _with_a_busy_worker(batcher: MicroBatcher, gate: Gate) -> asyncio.Future:
    """Start ``batcher`` and occupy its worker with one image until the gate is released."""
    batcher.start()
    busy = asyncio.ensure_future(batcher.submit(_images(1)))
    while not gate.entered.is_set():
        await asyncio.sleep(0.001)
    return busy


def test_the_queue_holds_exactly_max_queue_images():
    gate, sizes = Gate(), []

    async def scenario() -> None:
        batcher = MicroBatcher(gate, max_batch=8, max_wait_ms=0, max_queue=4, timeout_s=10, on_batch=sizes.append)
        busy = await _with_a_busy_worker(batcher, gate)
        full = asyncio.ensure_future(batcher.submit(_images(4)))  # 4 of 4: accepted
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match=r"^the request queue is full \(4 images\); retry shortly$"):
            await batcher.submit(_images(1))
        gate.release()
        assert (await full).shape == (4, 2) and (await busy).shape == (1, 2)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [1, 4]


@pytest.mark.parametrize(
    ("queued", "batches"),
    [
        ([2, 2], [4]),  # exactly max_batch: one batch
        ([1, 1, 1, 1, 1], [4, 1]),  # the fifth image starts the next batch
        ([3, 2, 2], [3, 4]),  # a request that does not fit starts the next batch, which still gathers
    ],
)
def test_queued_requests_are_packed_into_batches_of_at_most_max_batch(queued, batches):
    """While the worker is busy, requests of the given sizes queue up; released, they run in these batches,
    each request's rows back to that request."""
    gate, sizes = Gate(), []

    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(gate, max_batch=4, max_wait_ms=0, timeout_s=10, on_batch=sizes.append)
        busy = await _with_a_busy_worker(batcher, gate)
        waiting = [asyncio.ensure_future(batcher.submit(_images(n, float(i)))) for i, n in enumerate(queued)]
        await asyncio.sleep(0)
        gate.release()
        await busy
        answers = [await w for w in waiting]
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert sizes == [1, *batches]
    for i, (n, answer) in enumerate(zip(queued, answers, strict=True)):
        np.testing.assert_array_equal(answer, np.full((n, 2), 2.0 * i))


def test_without_arrival_counts_a_batch_waits_out_its_window_for_a_late_request():
    sizes: list[int] = []

    async def scenario() -> None:
        batcher = MicroBatcher(_predict, max_batch=2, max_wait_ms=800, timeout_s=10, on_batch=sizes.append)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_images(1)))
        await asyncio.sleep(0.05)
        second = await asyncio.wait_for(batcher.submit(_images(1)), 10)
        assert (await first).shape == second.shape == (1, 2)
        lone = await asyncio.wait_for(batcher.submit(_images(1)), 10)  # waits out the 0.8 s window, then runs
        assert lone.shape == (1, 2)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [2, 1]


def test_a_worker_that_dies_of_an_error_logs_that_error(caplog, monkeypatch):
    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(_predict, max_wait_ms=0, timeout_s=5)
        real_collect = batcher._collect
        calls = []

        async def collect_failing_once():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("queue corrupted")
            return await real_collect()

        monkeypatch.setattr(batcher, "_collect", collect_failing_once)
        batcher.start()
        await asyncio.sleep(0.01)
        answer = await batcher.submit(_images(1, 2.0))
        await batcher.stop()
        return answer

    with caplog.at_level("ERROR", logger="pih2t_deploy.serving.batcher"):
        np.testing.assert_array_equal(asyncio.run(scenario()), [[4.0, 4.0]])
    assert [r.getMessage() for r in caplog.records] == [
        "the inference worker stopped (queue corrupted); starting it again"
    ]


def test_a_request_without_an_answer_in_time_fails_with_a_timeout_and_later_ones_are_answered():
    gate = Gate()

    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(gate, max_wait_ms=0, timeout_s=0.2)
        batcher.start()
        with pytest.raises(RequestTimeoutError, match=r"^no answer within 0.2 s$"):
            await asyncio.wait_for(batcher.submit(_images(1)), 10)
        gate.release()
        answer = await asyncio.wait_for(batcher.submit(_images(1, 3.0)), 10)
        await batcher.stop()
        return answer

    np.testing.assert_array_equal(asyncio.run(scenario()), [[6.0, 6.0]])


def test_a_full_batch_runs_without_waiting_and_the_next_one_still_gathers():
    """max_batch 4 and a one-minute window (no arrival counts): a request that fills the batch runs at once;
    after a request that did not fit started the next batch, that batch still gathers within its window."""
    gate, sizes = Gate(), []

    async def scenario() -> None:
        batcher = MicroBatcher(gate, max_batch=4, max_wait_ms=60_000, timeout_s=120, on_batch=sizes.append)
        busy = asyncio.ensure_future(batcher.submit(_images(4)))  # full: runs at once, held by the gate
        batcher.start()
        while not gate.entered.is_set():
            await asyncio.sleep(0.001)
        three, two = (asyncio.ensure_future(batcher.submit(_images(n))) for n in (3, 2))
        await asyncio.sleep(0)
        gate.release()
        await asyncio.wait_for(asyncio.gather(busy, three), 10)
        late = await asyncio.wait_for(batcher.submit(_images(2)), 10)  # joins the 2 to fill the next batch
        assert (await two).shape == late.shape == (2, 2)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [4, 3, 4]


class CountingGate(Gate):
    """A Gate that also counts the calls inside it at once (``inside``, highest ``peak``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock, self.inside, self.peak = threading.Lock(), 0, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            return super().__call__(batch)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.parametrize(("parallel", "in_flight"), [(1, 1), (2, 3), (3, 4)])
def test_a_model_running_several_batches_gets_them_plus_one_gathered_ahead(parallel, in_flight):
    """Six one-image requests, max_batch 1: a model that runs ``parallel`` batches at once is given that many
    plus one gathered ahead (one at a time for a single-batch model), never more, and every request gets its
    own rows."""
    gate = CountingGate()

    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, timeout_s=10, parallel_batches=parallel)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(_images(1, float(i)))) for i in range(6)]
        while gate.inside < in_flight:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert gate.inside == in_flight and batcher.depth == 6 - in_flight
        gate.release()
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert gate.peak == in_flight
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, [[2.0 * i, 2.0 * i]])


def test_stop_waits_for_every_batch_in_flight():
    """Two batches running and one gathered ahead, none queued: stop returns once all three are answered."""
    gate = CountingGate()

    async def scenario() -> list[asyncio.Future]:
        batcher = MicroBatcher(gate, max_batch=1, max_wait_ms=0, timeout_s=10, parallel_batches=2)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(_images(1, float(i)))) for i in range(3)]
        while gate.inside < 3:
            await asyncio.sleep(0.001)
        threading.Timer(0.05, gate.release).start()
        await batcher.stop()
        assert all(w.done() for w in waiting), "stop returned before every batch in flight was answered"
        return waiting

    assert [w.result().tolist() for w in asyncio.run(scenario())] == [[[0.0, 0.0]], [[2.0, 2.0]], [[4.0, 4.0]]]
