"""wait_done: a deadline on waiting, never on the work; within: a deadline on the work;
Deadlines: many deadlines on one timer."""

import asyncio
import time

import pytest

from service.waiting import Deadlines, wait_done, within


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


# -- within ------------------------------------------------------------------------------


async def test_within_an_await_that_need_not_wait_arms_no_timer(monkeypatch):
    event = asyncio.Event()
    event.set()

    async def ready():
        await event.wait()  # set already: completes without suspending
        return "body"

    def no_timeout(*_a, **_k):
        raise AssertionError("asyncio.timeout armed for an await that did not wait")

    monkeypatch.setattr(asyncio, "timeout", no_timeout)
    assert await within(ready(), 0) == "body"


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


async def test_within_times_out_and_cancels_the_work():
    cleaned: list[bool] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(_stalled(cleaned), 0.05)
    assert time.monotonic() - started < 1 and cleaned == [True]


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


# -- Deadlines --------------------------------------------------------------------------------

def _recorder(fired: list[tuple[str, float]], name: str, start: float):
    return lambda: fired.append((name, time.monotonic() - start))


async def test_deadlines_fire_in_order_and_never_once_discarded():
    d, fired, start = Deadlines(), [], time.monotonic()
    for name, after in [("a", 0.05), ("b", 0.05), ("c", 0.10), ("d", 0.15), ("e", 0.20)]:
        d.add(name, start + after, _recorder(fired, name, start))
    d.discard("b")
    d.discard("d")
    await asyncio.sleep(0.3)
    assert [n for n, _ in fired] == ["a", "c", "e"]
    for (_, at), due in zip(fired, (0.05, 0.10, 0.20), strict=True):
        assert due - 0.002 <= at < due + 0.05
    assert len(d) == 0


async def test_a_deadline_added_after_a_later_one_is_not_held_up_by_it():
    # A push whose arrival was held up (a slow body) comes after one with a later deadline.
    d, fired, start = Deadlines(), [], time.monotonic()
    d.add("later", start + 0.30, _recorder(fired, "later", start))
    d.add("earlier", start + 0.05, _recorder(fired, "earlier", start))
    d.add("gone", start + 0.06, _recorder(fired, "gone", start))
    d.discard("gone")
    await asyncio.sleep(0.1)
    assert [n for n, _ in fired] == ["earlier"] and fired[0][1] < 0.09
    await asyncio.sleep(0.25)
    assert [n for n, _ in fired] == ["earlier", "later"]


async def test_a_failing_expiry_does_not_stop_the_others():
    d, fired, start = Deadlines(), [], time.monotonic()

    def broken():
        raise RuntimeError("bug")

    d.add("broken", start + 0.02, broken)
    d.add("fine", start + 0.02, _recorder(fired, "fine", start))
    await asyncio.sleep(0.08)
    assert [n for n, _ in fired] == ["fine"]


def test_deadlines_of_a_closed_loop_do_not_block_a_new_one():
    d, fired = Deadlines(), []

    async def add(name: str, after: float, wait: float) -> None:
        start = time.monotonic()
        d.add(name, start + after, _recorder(fired, name, start))
        await asyncio.sleep(wait)

    asyncio.run(add("never", 0.01, 0))  # its loop closes with the timer pending
    time.sleep(0.02)
    asyncio.run(add("next loop", 0.02, 0.08))
    assert [n for n, _ in fired] == ["next loop"]
