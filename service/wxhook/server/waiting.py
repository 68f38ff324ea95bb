"""Waiting for a future until a deadline without cancelling it, and background tasks' ends."""

from __future__ import annotations

import asyncio
from typing import Any

from wxhook.errors import WeChatAPIError
from wxhook.server.logs import get_logger


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
