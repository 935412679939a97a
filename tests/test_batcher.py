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
