"""wait_done: a deadline on waiting, never on the work; within: a deadline on the work, and
through it the body read's (a stalled body is refused with 408 when the push's deadline
comes)."""

import asyncio
import time
from typing import Any

import pytest

from tests.support import TOKEN
from tests.virtual_time import run_virtual
from wxhook.errors import GuardError
from wxhook.server.guard import Guard
from wxhook.server.metrics import Metrics
from wxhook.server.signature import sign
from wxhook.server.store.memory import MemoryStore
from wxhook.server.waiting import wait_done, within


async def test_done_in_time():
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, 7)
    assert await wait_done(fut, 1.0) and fut.result() == 7


def test_timeout_leaves_the_work_running():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(asyncio.sleep(0.2, result="late"))
        assert not await wait_done(task, 0.05)
        assert loop.time() == pytest.approx(0.05)  # gave up at its timeout, not the work's end
        assert not task.done()
        assert await task == "late" and loop.time() == pytest.approx(0.2)

    run_virtual(main)


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


# -- within ------------------------------------------------------------------------------


class Timers:
    """asyncio.timeout, counting the timers armed."""

    def __init__(self) -> None:
        self.armed = 0

    def __call__(self, delay: float) -> asyncio.Timeout:
        self.armed += 1
        return asyncio.timeout(delay)


async def test_within_arms_a_timer_only_for_an_await_that_waits():
    event = asyncio.Event()
    event.set()

    async def ready():
        await event.wait()  # set already: completes without suspending
        return "body"

    async def later():
        await asyncio.sleep(0)
        return "late body"

    timers = Timers()
    assert await within(ready(), 0, timer=timers) == "body"
    assert timers.armed == 0
    assert await within(later(), 1.0, timer=timers) == "late body"
    assert timers.armed == 1


async def test_within_an_await_that_suspends_gets_its_result():
    async def later():
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        return "late body"

    assert await within(later(), 1.0) == "late body"


async def _stalled(cleaned: list[bool]) -> None:
    """Work that never finishes on its own; says when it was cleaned up."""
    try:
        await asyncio.sleep(10)
    finally:
        cleaned.append(True)


def test_within_times_out_and_cancels_the_work():
    async def main() -> None:
        cleaned: list[bool] = []
        with pytest.raises(TimeoutError):
            await within(_stalled(cleaned), 0.05)
        assert asyncio.get_running_loop().time() == pytest.approx(0.05)
        assert cleaned == [True]

    run_virtual(main)


async def test_within_passes_errors_through_before_and_after_suspending():
    async def fails_at_once():
        raise ValueError("first step")

    async def fails_later():
        await asyncio.sleep(0)
        raise KeyError("second step")

    with pytest.raises(ValueError, match="first step"):
        await within(fails_at_once(), 1)
    with pytest.raises(KeyError):
        await within(fails_later(), 1)


async def test_within_the_work_can_catch_what_is_thrown_in():
    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "caught"  # a coroutine may answer a cancellation; within must relay it
        return "never"

    task = asyncio.ensure_future(within(stubborn(), 5))
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task == "caught"


async def test_within_cancelling_the_caller_cancels_the_work():
    cleaned: list[bool] = []
    task = asyncio.ensure_future(within(_stalled(cleaned), 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_within_accepts_awaitables_that_are_not_coroutines():
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, 3)
    assert await within(fut, 1) == 3
    with pytest.raises(TimeoutError):
        await within(asyncio.get_running_loop().create_future(), 0.01)


TS = "1700000000"


# -- the body read's deadline (asyncio.timeout in the guard) -------------------------------


async def _read_with(guard: Guard, receive: Any, deadline: float) -> Any:
    scope = {"headers": []}  # chunked: no length, so the read goes on until more_body ends
    params = {"signature": sign(TOKEN, TS, "1"), "timestamp": TS, "nonce": "1"}
    return await guard.admit(scope, receive, params, deadline)


def test_a_body_that_stalls_is_refused_at_the_deadline(settings):
    async def main() -> None:
        guard = Guard(settings, store=MemoryStore(), namespace="t:", metrics=Metrics(),
                      clock=lambda: float(TS))
        sent = []

        async def receive() -> dict[str, Any]:
            if not sent:  # a first chunk, then nothing more, ever
                sent.append(1)
                return {"type": "http.request", "body": b"<xml>", "more_body": True}
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(GuardError) as caught:
            await _read_with(guard, receive, time.monotonic() + 0.25)
        assert caught.value.status == 408 and caught.value.reason == "slow_body"
        assert loop.time() - start == pytest.approx(0.25, abs=0.01)
    run_virtual(main)


async def test_a_body_that_arrives_is_read_whole(settings):
    guard = Guard(settings, store=MemoryStore(), namespace="t:", metrics=Metrics(),
                  clock=lambda: float(TS))
    chunks = [b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName>",
              b"<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content>",
              b"<MsgId>1</MsgId></xml>"]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)  # each chunk a turn of the loop later
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    admitted = await _read_with(guard, receive, time.monotonic() + 5)
    assert admitted.message.content == "hi"
