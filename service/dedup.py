"""Retry de-duplication with reply replay (pipeline step 4).

WeChat drops a push it got no answer to within 5 s and sends it again, three tries in all.
The first try runs the handler; every retry, here or on another instance, gets the first
try's reply byte for byte, and the handler's side effects happen once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .replies import SUCCESS
from .store.base import Store

_PENDING = b"\x00pending"   # claimed, reply not yet known (cannot be a valid reply)
_POLL = 0.05                # how often a retry on another instance looks for the reply


class Dedup:
    """Run `produce` once per key; concurrent and later tries get its bytes."""

    def __init__(self, store: Store, *, namespace: str, ttl: float = 60.0) -> None:
        self.store = store
        self.prefix = namespace + "dedup:"
        self.ttl = ttl
        self._local: dict[str, asyncio.Future[bytes]] = {}
        self._running: set[asyncio.Task[bytes]] = set()

    async def run(self, key: str, produce: Callable[[], Awaitable[bytes]], *,
                  deadline: float) -> tuple[bytes, bool]:
        """(reply, was_a_retry). Never waits past `deadline`: then the answer is "success"."""
        fut = self._local.get(key)
        if fut is not None:  # the first try is still running in this process
            return await _wait(fut, deadline), True
        skey = self.prefix + key
        if not await self.store.set(skey, _PENDING, ttl=self.ttl, nx=True):
            return await self._wait_stored(skey, deadline), True
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._local[key] = fut
        # The first try's work runs in its own task: if its connection is dropped and the
        # server cancels the request, the handler still finishes once and retries get its reply.
        task = loop.create_task(self._first(key, skey, produce, fut))
        self._running.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task), False

    def _settled(self, task: asyncio.Task[bytes]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # the caller may be gone: never "exception was never retrieved"

    async def _first(self, key: str, skey: str, produce: Callable[[], Awaitable[bytes]],
                     fut: asyncio.Future[bytes]) -> bytes:
        try:
            reply = await produce()
        except BaseException as exc:
            # Let a later try run again rather than replaying nothing.
            await self.store.delete_if(skey, _PENDING)
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get their own copy below
            raise
        finally:
            self._local.pop(key, None)
        await self.store.set(skey, reply, ttl=self.ttl)
        fut.set_result(reply)
        return reply

    async def _wait_stored(self, skey: str, deadline: float) -> bytes:
        while True:
            value = await self.store.get(skey)
            if value is None:
                return SUCCESS  # the claim expired or its holder failed: nothing to replay
            if value != _PENDING:
                return value
            if time.monotonic() + _POLL >= deadline:
                return SUCCESS
            await asyncio.sleep(_POLL)


async def _wait(fut: asyncio.Future[bytes], deadline: float) -> bytes:
    try:
        return await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return SUCCESS
    except Exception:
        return SUCCESS
