"""wait_done: a deadline on waiting, never on the work; the body read: a deadline on the
work (a stalled body is refused with 408 when the push's deadline comes)."""

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
from wxhook.server.waiting import wait_done


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
