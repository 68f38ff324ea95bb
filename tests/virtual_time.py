"""An event loop on virtual time, for tests of timing logic that must not depend on how busy
the machine is.

When nothing is ready to run and no I/O is ready, the loop's clock jumps straight to the next
timer instead of sleeping: timers fire in their real order, at exact virtual times, at once.
`loop.time()` is the clock to assert on. Only for code that waits on the loop's own timers
(asyncio.sleep, wait_for, timeout, call_later): code that reads time.monotonic() itself does
not see virtual time pass, and a thread or a socket still works in real time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Asked to wait `timeout` s with nothing ready: moves the clock on by it instead."""

    now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O (or another thread) can wake us
            return list(super().select(None))
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose time() is virtual (starts at 0.0)."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` to completion on a fresh VirtualTimeLoop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())
