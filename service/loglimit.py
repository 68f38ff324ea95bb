"""Log lines that a flood can set off, bounded: at most a few a second for each reason.

Every refused push writes a warning; unsigned pushes cost an attacker nothing, so without
a bound a flood of them fills the disk. Lines over the bound are counted
(wxhook_log_lines_suppressed_total) and the next line for the same reason is preceded by
one `log_lines_suppressed` line that says how many were left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .metrics import Metrics

LINES_PER_SECOND = 10


class LimitedLog:
    """A logger's warning() and info(), at most `per_second` lines a second for each key."""

    def __init__(self, log: Any, *, metrics: Metrics, per_second: int = LINES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.metrics = metrics
        self.per_second = per_second
        self.clock = clock
        # key -> [second, lines written in it, lines left out since the last one written]
        self._seconds: dict[str, list[int]] = {}

    def warning(self, key: str, event: str, **fields: Any) -> None:
        """log.warning(event, **fields) unless `key` has had its lines this second."""
        if self._admit(key, event):
            self.log.warning(event, **fields)

    def info(self, key: str, event: str, **fields: Any) -> None:
        """log.info(event, **fields) under the same bound."""
        if self._admit(key, event):
            self.log.info(event, **fields)

    def _admit(self, key: str, event: str) -> bool:
        second = int(self.clock())
        state = self._seconds.setdefault(key, [second, 0, 0])
        if state[0] != second:
            state[0], state[1] = second, 0
        if state[1] >= self.per_second:
            state[2] += 1
            self.metrics.log_lines_suppressed.labels(event).inc()
            return False
        if state[2]:
            self.log.warning("log_lines_suppressed", suppressed_event=event, key=key,
                             suppressed=state[2])
            state[2] = 0
        state[1] += 1
        return True
