"""Waiting until a deadline, at the price of what the wait really needs.

An await that need not wait at all (uvicorn holds the whole body when a push's headers
arrive) needs no timer: `within` runs its first step before arming one (bench/README.md,
"Hand-written structures", has what it saves). Waiting for another's future uses
asyncio.wait, which neither cancels the future nor raises its error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any, Generic, TypeVar

from wxhook.errors import WeChatAPIError
from wxhook.server.logs import get_logger

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float, *,  # noqa: ASYNC109 - it is the timeout
                 timer: Callable[[float], asyncio.Timeout] = asyncio.timeout) -> T:
    """Await `aw`, or raise TimeoutError (and cancel it) after `timeout` seconds.

    A coroutine's first step runs here first, so only an await that suspends pays for the
    timer. asyncio.timeout() around every body read, which almost never waits, cost a push
    too much to keep (bench/README.md, "Hand-written structures").
    """
    if not isinstance(aw, CoroutineType):  # (an ABC check here costs more than it saves)
        async with timer(timeout):
            return await aw
    try:
        first = aw.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    async with timer(max(0.0, timeout)):
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


async def wait_done(fut: asyncio.Future[Any], timeout: float) -> bool:  # noqa: ASYNC109 - a wait
    """Wait until `fut` is done or `timeout` seconds pass; True when done. Never cancels it
    (asyncio.wait neither cancels nor raises what `fut` raises)."""
    if not fut.done() and timeout > 0:
        await asyncio.wait((fut,), timeout=timeout)
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
