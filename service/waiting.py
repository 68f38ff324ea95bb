"""Waiting for a future until a deadline, without cancelling it.

asyncio.wait_for(shield(fut)) and asyncio.wait() do this with a task, a shield or a set
per call; on a path every push takes, a future and a timer are enough.
"""

from __future__ import annotations

import asyncio
from typing import Any


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
