"""Rate-limited logging of repeated errors: a flood of the same failure (thousands of broken connections a
minute) must not fill the disk with tracebacks or hide everything else in the log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

MAX_KEYS = 1024


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RepeatedMessageFilter(logging.Filter):
    """Per ``window_s`` seconds and per kind of record (logger, message template, exception type): the first
    record passes whole, the next ``burst - 1`` pass as one line (no traceback), the rest are dropped and
    counted; the first record of the next window says how many were dropped."""

    def __init__(self, burst: int = 5, window_s: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._windows: dict[tuple, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """True to emit ``record`` (possibly shortened or annotated), False to drop it."""
        error = record.exc_info[0] if record.exc_info else None
        key = (record.name, str(record.msg), error)
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.window_s:
            if len(self._windows) >= MAX_KEYS:
                self._windows.clear()
            self._windows[key] = _Window(now, passed=1)
            if window is not None and window.suppressed:
                record.msg = (
                    f"{record.msg} [{window.suppressed} more like this in the last {self.window_s:g} s not logged]"
                )
            return True
        if window.passed >= self.burst:
            window.suppressed += 1
            return False
        window.passed += 1
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = (
                f"{record.msg} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]}; traceback logged before)"
            )
            record.exc_info, record.exc_text = None, None
        return True


def limit_repeated_logs(*logger_names: str, burst: int = 5, window_s: float = 10.0) -> RepeatedMessageFilter:
    """Install one RepeatedMessageFilter on each named logger (records logged to it directly); returns it."""
    limiter = RepeatedMessageFilter(burst, window_s)
    for name in logger_names:
        logging.getLogger(name).addFilter(limiter)
    return limiter
