"""The micro-batcher's worker survives what goes wrong inside it: an error in a batch reaches that batch's
requests (not a hang until the 504), and a worker task that ends anyway is started again, so a ready server
never answers 504 forever."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pih2t_deploy.serving.batcher import MicroBatcher


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
    "bad", [{"max_batch": 0}, {"max_queue": 0}, {"max_wait_ms": -0.5}, {"timeout_s": 0.0}], ids=lambda b: next(iter(b))
)
def test_each_bad_setting_alone_is_refused(bad):
    with pytest.raises(ValueError, match=r"max_batch and max_queue must be >= 1, max_wait_ms >= 0, timeout_s > 0"):
        MicroBatcher(_predict, **bad)


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
    on_the_way = {"n": 0}

    async def scenario() -> None:
        batcher = MicroBatcher(
            _predict, max_wait_ms=60_000, timeout_s=120, on_batch=sizes.append, arrivals=lambda: on_the_way["n"]
        )
        batcher.start()
        lone = await asyncio.wait_for(batcher.submit(np.ones((1, 1, 2, 2), dtype=np.float32)), 10)
        np.testing.assert_array_equal(lone, [[2.0, 2.0]])
        on_the_way["n"] = 1
        first = asyncio.ensure_future(batcher.submit(np.ones((2, 1, 2, 2), dtype=np.float32)))
        await asyncio.sleep(0.05)
        assert not first.done(), "the batch ran although a request was on its way"
        on_the_way["n"] = 0
        second = await asyncio.wait_for(batcher.submit(np.ones((1, 1, 2, 2), dtype=np.float32)), 10)
        assert (await first).shape == (2, 2) and second.shape == (1, 2)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [1, 3]
