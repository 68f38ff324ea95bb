"""Retry de-duplication with reply replay (pipeline step 4).

WeChat drops a push it got no answer to within 5 s and sends it again, three tries in all.
The first try claims the push and runs the handler; every retry, here or on another
instance, gets the first try's reply byte for byte, and the handler's side effects happen
once.
"""

from __future__ import annotations

import asyncio
import time

from .observability import get_logger
from .replies import SUCCESS
from .store.base import Store
from .waiting import wait_done

_PENDING = b"\x00pending"   # claimed, reply not yet known (cannot be a valid reply)
_POLL = 0.05                # how often a retry on another instance looks for the reply


class Dedup:
    """claim() once per push; retries replay() what the claimant settle()s."""

    def __init__(self, store: Store, *, namespace: str, ttl: float = 60.0) -> None:
        self.store = store
        # The namespace tells apps apart in a shared store; a process-local one serves one
        # app, and every push leaves a key in it for the whole TTL: there the push's own key
        # ("m:<MsgId>", "e:<openid>:..."; nothing else in the store starts so) is used as is.
        self.prefix = namespace + "dedup:" if store.shared else ""
        self.ttl = ttl
        self.log = get_logger("wxhook.dedup")
        # Claims held by this process (key -> store key, built once: it is kept in the store
        # for the whole TTL) and, once a local retry waits, the future it waits on.
        self._claims: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Future[bytes]] = {}

    async def claim(self, key: str) -> bool:
        """True when this try is the first and must produce the reply."""
        if key in self._claims:
            return False
        skey = self.prefix + key
        try:
            if not self.store.shared:
                # Only this process reads a local store: _claims is the pending marker, and
                # the store keeps settled replies only (one write a push, not two).
                if await self.store.get(skey) is not None:
                    return False
            elif not await self.store.set(skey, _PENDING, ttl=self.ttl, nx=True):
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
        return await self._wait_stored(self.prefix + key, deadline)

    async def settle(self, key: str, reply: bytes) -> None:
        """Record the reply every later try of this push gets."""
        try:
            await self.store.set(self._claims.get(key) or self.prefix + key, reply, ttl=self.ttl)
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
