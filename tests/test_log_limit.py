"""Rate-limited error logs: a flood of one failure gives a few lines, not one traceback per request."""

from __future__ import annotations

import logging

from pih2t_deploy.serving.log_limit import RepeatedMessageFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _flood(logger: logging.Logger, times: int) -> None:
    for i in range(times):
        try:
            raise ConnectionResetError(f"peer {i} went away")
        except ConnectionResetError:
            logger.exception("Exception in ASGI application")


def test_a_flood_of_one_error_is_a_traceback_then_one_liners_then_a_count(caplog):
    clock = Clock()
    logger = logging.getLogger("pih2t_test.flood")
    logger.addFilter(RepeatedMessageFilter(burst=3, window_s=10.0, clock=clock))
    with caplog.at_level(logging.ERROR, logger="pih2t_test.flood"):
        _flood(logger, 10_000)
        logging.getLogger("pih2t_test.flood").error("something else")  # another kind passes
        clock.now = 10.0
        _flood(logger, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5, lines
    assert caplog.records[0].exc_info is not None and lines[0] == "Exception in ASGI application"
    assert lines[1] == "Exception in ASGI application (ConnectionResetError: peer 1 went away; traceback logged before)"
    assert caplog.records[1].exc_info is None and caplog.records[2].exc_info is None
    assert lines[3] == "something else"
    assert lines[4] == "Exception in ASGI application [9997 more like this in the last 10 s not logged]"
    assert caplog.records[4].exc_info is not None
