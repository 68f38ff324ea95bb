"""wait_done: a deadline on waiting, never on the work."""

import asyncio
import time

from service.waiting import wait_done


async def test_done_in_time():
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, 7)
    assert await wait_done(fut, 1.0) and fut.result() == 7


async def test_timeout_leaves_the_work_running():
    task = asyncio.ensure_future(asyncio.sleep(0.2, result="late"))
    started = time.monotonic()
    assert not await wait_done(task, 0.05)
    assert time.monotonic() - started < 0.15 and not task.cancelled()
    assert await task == "late"


async def test_cancelling_the_waiter_spares_the_work():
    task = asyncio.ensure_future(asyncio.sleep(0.1, result="kept"))
    waiter = asyncio.ensure_future(wait_done(task, 5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    assert await task == "kept"


async def test_zero_timeout_does_not_wait():
    fut = asyncio.get_running_loop().create_future()
    assert not await wait_done(fut, 0)
    fut.cancel()
