"""Retry de-duplication with reply replay (pipeline step 4).

WeChat drops a push it got no answer to within 5 s and sends it again, three tries in all.
The first try claims the push and runs the handler; every retry, here or on another
instance, gets the first try's reply byte for byte, and the handler's side effects happen
once.
"""

from __future__ import annotations

import asyncio
import time

from .logs import get_logger
from .replies import SUCCESS
from .store.base import Store
from .store.fifo import FifoMemory, digest
from .waiting import wait_done

_PENDING = b"\x00pending"   # claimed, reply not yet known (cannot be a valid reply)
_POLL = 0.05                # how often a retry on another instance looks for the reply


class Dedup:
    """claim() once per push; retries replay() what the claimant settle()s."""

    def __init__(self, store: Store, *, namespace: str, ttl: float = 60.0) -> None:
        self.store = store
        self.prefix = namespace + "dedup:"
        self.ttl = ttl
        self.log = get_logger("wxhook.dedup")
        # Without a shared store the replies stay in this process, in a memory made for
        # hundreds of thousands of them (every push leaves one for the whole TTL).
        self.local = None if store.shared else FifoMemory(ttl=ttl)
        # Claims held by this process (key -> where its reply goes: a store key, or the
        # key's digest in the local memory) and, once a local retry waits, its future.
        self._claims: dict[str, str | int] = {}
        self._waiters: dict[str, asyncio.Future[bytes]] = {}

    async def claim(self, key: str) -> bool:
        """True when this try is the first and must produce the reply."""
        if key in self._claims:
            return False
        if self.local is not None:
            # Only this process reads it: _claims is the pending marker, and the memory
            # keeps settled replies only.
            where = digest(key)
            if self.local.get(where) is not None:
                return False
            self._claims[key] = where
            return True
        skey = self.prefix + key
        try:
            if not await self.store.set(skey, _PENDING, ttl=self.ttl, nx=True):
                return False
        except Exception as exc:  # noqa: BLE001 - store down: answer, at the risk of twice
            self.log.warning("dedup_unavailable", step="claim", error=type(exc).__name__)
        self._claims[key] = skey
        return True

    async def replay(self, key: str, deadline: float) -> bytes:
        """The first try's reply; "success" if it is not ready before `deadline`."""
        if key in self._claims:  # the first try runs in this process: no polling
            fut = self._waiters.get(key)
            if fut is None:
                fut = self._waiters[key] = asyncio.get_running_loop().create_future()
            if await wait_done(fut, deadline - time.monotonic()):
                return fut.result()
            return SUCCESS
        if self.local is not None:
            return self.local.get(digest(key)) or SUCCESS
        return await self._wait_stored(self.prefix + key, deadline)

    async def settle(self, key: str, reply: bytes) -> None:
        """Record the reply every later try of this push gets."""
        where = self._claims.get(key)
        try:
            if self.local is not None:
                self.local.put(where if isinstance(where, int) else digest(key), reply)
            else:
                await self.store.set(where if isinstance(where, str) else self.prefix + key,
                                     reply, ttl=self.ttl)
        except Exception as exc:  # noqa: BLE001 - local waiters still get the reply below
            self.log.warning("dedup_unavailable", step="settle", error=type(exc).__name__)
        finally:
            self._claims.pop(key, None)
            fut = self._waiters.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def _wait_stored(self, skey: str, deadline: float) -> bytes:
        while True:
            try:
                value = await self.store.get(skey)
            except Exception as exc:  # noqa: BLE001 - store down: answer in time
                self.log.warning("dedup_unavailable", step="replay", error=type(exc).__name__)
                return SUCCESS
            if value is None:
                return SUCCESS  # the claim expired or its holder failed: nothing to replay
            if value != _PENDING:
                return value
            if time.monotonic() + _POLL >= deadline:
                return SUCCESS
            await asyncio.sleep(_POLL)
