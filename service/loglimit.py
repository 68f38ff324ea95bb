"""Log lines that a flood can set off, bounded: at most a few a second for each reason.

Every refused push, forged OAuth callback or malformed HTTP request writes a line, and each
costs an attacker nothing; without a bound a flood of them fills the disk. Lines over the
bound are counted (wxhook_log_lines_suppressed_total) and the next line for the same reason
is preceded by one `log_lines_suppressed` line that says how many were left out.

Our own lines go through LimitedLog; the standard library's (uvicorn's "Invalid HTTP
request received.", asyncio's) through LimitedRecords on the log handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .logs import get_logger
from .metrics import Metrics

LINES_PER_SECOND = 10
MAX_KEYS = 1024  # reasons remembered; a message that names its own data cannot grow this


class LimitedLog:
    """A logger's warning(), info() and error(), at most `per_second` lines a second for
    each key."""

    def __init__(self, log: Any, *, metrics: Metrics, per_second: int = LINES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.metrics = metrics
        self.per_second = per_second
        self.clock = clock
        # key -> [second, lines written in it, lines left out since the last one written]
        self._seconds: dict[str, list[int]] = {}

    def admit(self, key: str, event: str) -> bool:
        """True when a line for `key` may be written now; counts the line when it may not."""
        second = int(self.clock())
        state = self._seconds.get(key)
        if state is None:
            if len(self._seconds) >= MAX_KEYS:
                key = "(other)"  # every further reason shares one bound
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

    def warning(self, key: str, event: str, **fields: Any) -> None:
        """log.warning(event, **fields) unless `key` has had its lines this second."""
        if self.admit(key, event):
            self.log.warning(event, **fields)

    def info(self, key: str, event: str, **fields: Any) -> None:
        """log.info(event, **fields) unless `key` has had its lines this second."""
        if self.admit(key, event):
            self.log.info(event, **fields)

    def error(self, key: str, event: str, **fields: Any) -> None:
        """log.error(event, **fields) unless `key` has had its lines this second."""
        if self.admit(key, event):
            self.log.error(event, **fields)


class LimitedRecords(logging.Filter):
    """Standard-library records under the same bound, one key per logger and message."""

    def __init__(self, limited: LimitedLog) -> None:
        super().__init__()
        self.limited = limited

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` is written (its unformatted message is the reason)."""
        # record.msg before formatting: uvicorn's "%s" arguments never become new keys.
        return self.limited.admit(f"{record.name}: {str(record.msg)[:120]}", record.name)


def limit_library_logs(metrics: Metrics) -> None:
    """Bound what the standard library's loggers write, uvicorn's own included.

    A malformed request line, a WebSocket upgrade, a connection reset: each makes uvicorn
    (or asyncio) log a line per request, before any route of ours sees it.
    """
    limited = LimitedLog(get_logger("wxhook.logs"), metrics=metrics)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, LimitedRecords)]:
            handler.removeFilter(old)
        handler.addFilter(LimitedRecords(limited))
