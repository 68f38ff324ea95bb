"""Waiting until a deadline, at the price of what the wait really needs.

asyncio.wait_for(shield(fut)) and asyncio.wait() do this with a task, a shield or a set
per call; on a path every push takes, a future and a timer are enough, and an await that
need not wait at all (uvicorn holds the whole body when a push's headers arrive) needs
neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any, Generic, TypeVar

from .errors import WeChatAPIError
from .logs import get_logger

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float) -> T:
    """Await `aw`, or raise TimeoutError (and cancel it) after `timeout` seconds.

    asyncio.timeout() costs a timer and two context switches of bookkeeping, ~10% of a
    push; a coroutine's first step runs here first, so only an await that suspends pays it.
    """
    if not isinstance(aw, CoroutineType):  # (an ABC check here costs more than it saves)
        async with asyncio.timeout(timeout):
            return await aw
    try:
        first = aw.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    async with asyncio.timeout(max(0.0, timeout)):
        return await _Resumed(aw, first)


class _Resumed(Generic[T]):
    """A coroutine whose first step already ran and yielded `first`, awaited to its end.

    The task awaiting this passes every value and exception through (cancellation
    included), exactly as if it had started the coroutine itself.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, T]:
        coro, pending = self.coro, self.first
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, not eaten
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                continue
            try:
                pending = coro.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


class Deadlines:
    """Call each entry's `expire` at its deadline unless discarded first; one timer for all.

    A timer a push (`loop.call_later` and its cancel) cost ~1.6 us of a ~45 us push under
    uvloop, and the future wait_done() adds to be woken by either ~3 us more. Deadlines that
    are arrival + the same allowance come nearly in order: entries kept in that order need
    one timer, for the oldest; each firing expires those due and waits for the next. An
    entry added after one with a later deadline (its arrival was held up, say by a slow
    body) gets a timer of its own, so no deadline waits for another.
    """

    _EARLY = 0.001  # the loop's clock has millisecond steps: a timer may fire that early

    def __init__(self) -> None:
        self._due: dict[object, tuple[float, Callable[[], None]]] = {}  # in deadline order
        self._last = float("-inf")  # the latest deadline in _due's order so far
        self._strays: dict[object, asyncio.TimerHandle] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._due) + len(self._strays)

    def add(self, key: object, deadline: float, expire: Callable[[], None]) -> None:
        """Call `expire()` at `deadline` (time.monotonic()) unless `key` is discarded."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, a restart): the old one's are void
            self._due.clear()
            self._strays.clear()
            self._loop, self._timer, self._last = loop, None, float("-inf")
        if deadline < self._last:
            self._strays[key] = loop.call_later(max(0.0, deadline - time.monotonic()),
                                                self._expire_stray, key, expire)
            return
        self._last = deadline
        self._due[key] = (deadline, expire)
        if self._timer is None:
            self._arm(deadline)

    def discard(self, key: object) -> None:
        """Forget an entry (its work finished in time)."""
        if self._due.pop(key, None) is None and self._strays:
            timer = self._strays.pop(key, None)
            if timer is not None:
                timer.cancel()

    def _arm(self, deadline: float) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        due, now = self._due, time.monotonic() + self._EARLY
        expired = []
        for key, (deadline, _) in due.items():
            if deadline > now:
                break
            expired.append(key)
        for key in expired:
            _expire(due.pop(key)[1])
        if due:
            self._arm(next(iter(due.values()))[0])

    def _expire_stray(self, key: object, expire: Callable[[], None]) -> None:
        self._strays.pop(key, None)
        _expire(expire)


def _expire(expire: Callable[[], None]) -> None:
    try:
        expire()
    except Exception as exc:  # noqa: BLE001 - one entry's bug must not stop the others
        get_logger("wxhook").error("deadline_expire_failed", exc_info=exc)


async def wait_done(fut: asyncio.Future[Any], timeout: float) -> bool:
    """Wait until `fut` is done or `timeout` seconds pass; True when done. Never cancels it."""
    if fut.done():
        return True
    if timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        fut.remove_done_callback(wake)
    return fut.done()


def settle_quietly(task: asyncio.Task[Any]) -> None:
    """Done-callback for background work: retrieve its outcome, log what nobody expected.

    WeChat API errors are logged where they happen (token refreshes, lookups); anything else
    (a store error, a bug) would otherwise vanish into "exception was never retrieved".
    """
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, WeChatAPIError):
        get_logger("wxhook").error("background_task_failed", task=task.get_name(), exc_info=exc)
