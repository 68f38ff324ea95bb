"""SIGHUP in a wxhook server process: handled from the start, never the default (an exit).

`wxhook serve` installs it before anything else is imported, and each worker before its
app and rules load (a worker is even spawned with SIGHUP blocked, so one sent while it
starts waits for this handler). The handler only records the signal and wakes the event
loop; the reload, or the one line saying there is nothing to reload, runs in the loop.
A SIGHUP that comes before the app listens is kept and handed over when it does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

_listener: tuple[Any, Callable[[], None]] | None = None  # (event loop, callback)
_pending = False


def install() -> None:
    """Take SIGHUP over in this process (main thread), then let a held-back one through."""
    signal.signal(signal.SIGHUP, _on_sighup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def listen(loop: Any, callback: Callable[[], None]) -> None:
    """Run `callback` in `loop` at every SIGHUP, and now for one that came before."""
    global _listener, _pending  # noqa: PLW0603 - a signal has one listener per process
    _listener = (loop, callback)
    if _pending:
        _pending = False
        loop.call_soon(callback)


def unlisten(callback: Callable[[], None]) -> None:
    """Stop calling `callback` (a SIGHUP from now on is kept for the next listener)."""
    global _listener  # noqa: PLW0603 - a signal has one listener per process
    if _listener is not None and _listener[1] is callback:
        _listener = None


def take_pending() -> bool:
    """True (once) when a SIGHUP came while nobody listened."""
    global _pending
    pending, _pending = _pending, False
    return pending


def _on_sighup(signum: int, frame: Any) -> None:
    global _pending  # noqa: PLW0603 - a signal has one listener per process
    listener = _listener
    if listener is not None:
        loop, callback = listener
        try:
            loop.call_soon_threadsafe(callback)
            return
        except RuntimeError:  # the loop is closed: the app is shutting down
            pass
    _pending = True
