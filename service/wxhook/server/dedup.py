"""Retry de-duplication with reply replay (pipeline step 4).

WeChat drops a push it got no answer to within 5 s and sends it again, three tries in all.
The first try claims the push and runs the handler; every retry, here or on another
instance, gets the first try's reply byte for byte, and the handler's side effects happen
once.

With a shared store a claim is a lease: it lives `lease` seconds and the process holding
it renews it while the handler runs. A holder that dies (SIGKILL, OOM, a lost node) stops
renewing, its claim runs out within the lease, and the next try takes the push over and
runs the handler itself, in time for its own deadline. Each claim carries a fencing value,
so a holder that lost its lease (its loop stalled longer than the lease) cannot overwrite
the reply of the try that took over.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from wxhook.replies import SUCCESS
from wxhook.server.logs import get_logger
from wxhook.server.store.fifo import FifoMemory, digest
from wxhook.server.waiting import settle_quietly, wait_done
from wxhook.store import Store, own_slot

_PENDING = b"\x00pending:"  # + the holder's fencing value (no reply starts with a NUL)
_POLL = 0.05                # how often a retry on another instance looks for the reply
LEASE = 2.0                 # a shared claim's life unless its holder renews it


class Dedup:
    """claim() once per push; retries replay() what the claimant settle()s."""

    def __init__(self, store: Store, *, namespace: str, ttl: float = 60.0,
                 lease: float = LEASE, clock: Callable[[], float] = time.monotonic,
                 local: FifoMemory | None = None) -> None:
        self.store = store
        self.prefix = namespace + "dedup:"
        self.ttl = ttl
        self.lease = lease
        self.log = get_logger("wxhook.dedup")
        # Without a shared store the replies stay in this process, in a memory made for
        # hundreds of thousands of them (every push leaves one for the whole TTL); the
        # accounts of an accounts file share one (`local`), so keys there name the appid.
        self.local = None if store.shared else (
            local if local is not None else FifoMemory(ttl=ttl, clock=clock))
        self._scope = self.prefix if local is not None else ""
        # Claims held by this process (key -> its fencing value in the store, or its digest
        # in the local memory) and, once a local retry waits, its future.
        self._claims: dict[str, bytes | int] = {}
        self._waiters: dict[str, asyncio.Future[bytes]] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def claim(self, key: str) -> bool:
        """True when this try is the first and must produce the reply."""
        if key in self._claims:
            return False
        if self.local is not None:
            # Only this process reads it: _claims is the pending marker, and the memory
            # keeps settled replies only.
            where = digest(self._scope + key)
            if self.local.get(where) is not None:
                return False
            self._claims[key] = where
            return True
        return await self._claim_shared(key)

    async def replay(self, key: str, deadline: float) -> bytes | None:
        """The first try's reply; "success" if it is not ready before `deadline`; None when
        the first try's holder died and this try took the claim over (it must run the
        handler and settle)."""
        if key in self._claims:  # the first try runs in this process: no polling
            fut = self._waiters.get(key)
            if fut is None:
                fut = self._waiters[key] = asyncio.get_running_loop().create_future()
            if await wait_done(fut, deadline - time.monotonic()):
                return fut.result()
            return SUCCESS
        if self.local is not None:
            return self.local.get(digest(self._scope + key)) or SUCCESS
        return await self._wait_stored(key, deadline)

    async def settle(self, key: str, reply: bytes) -> None:
        """Record the reply every later try of this push gets."""
        mine = self._claims.get(key)
        try:
            if self.local is not None:
                self.local.put(mine if isinstance(mine, int) else digest(self._scope + key),
                               reply)
            elif isinstance(mine, bytes) and not await self.store.replace_if(
                    own_slot(self.prefix, key), mine, reply, ttl=self.ttl):
                # Our lease ran out (a stalled loop) and another try took the push over:
                # its reply stands.
                self.log.warning("dedup_claim_lost")
        except Exception as exc:  # noqa: BLE001 - local waiters still get the reply below
            self.log.warning("dedup_unavailable", step="settle", error=type(exc).__name__)
        finally:
            self._claims.pop(key, None)
            fut = self._waiters.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def _claim_shared(self, key: str) -> bool:
        mine = _PENDING + os.urandom(8).hex().encode()
        try:
            if not await self.store.set(own_slot(self.prefix, key), mine, ttl=self.lease, nx=True):
                return False
        except Exception as exc:  # noqa: BLE001 - store down: answer, at the risk of twice
            self.log.warning("dedup_unavailable", step="claim", error=type(exc).__name__)
        self._claims[key] = mine
        loop = asyncio.get_running_loop()
        if self._renewer is None or self._renewer.done() or self._renewer.get_loop() is not loop:
            self._renewer = loop.create_task(self._renew())
            self._renewer.add_done_callback(settle_quietly)
        return True

    async def _renew(self) -> None:
        # One task renews every claim this process holds, a few times per lease: a timer
        # per push would cost every push, and most are settled long before the first turn.
        while self._claims:
            await asyncio.sleep(self.lease / 4)
            held = [(key, mine) for key, mine in self._claims.items() if isinstance(mine, bytes)]
            await asyncio.gather(*(self.store.replace_if(own_slot(self.prefix, key), mine, mine,
                                                         ttl=self.lease)
                                   for key, mine in held), return_exceptions=True)

    async def _wait_stored(self, key: str, deadline: float) -> bytes | None:
        skey = own_slot(self.prefix, key)
        while True:
            try:
                value = await self.store.get(skey)
            except Exception as exc:  # noqa: BLE001 - store down: answer in time
                self.log.warning("dedup_unavailable", step="replay", error=type(exc).__name__)
                return SUCCESS
            if value is None:
                # Neither a claim nor a reply: the holder died and its lease ran out.
                if await self._claim_shared(key):
                    self.log.warning("dedup_claim_taken_over")
                    return None
                continue  # another try took it over first: wait for its reply
            if not value.startswith(_PENDING):
                return value
            if time.monotonic() + _POLL >= deadline:
                return SUCCESS
            await asyncio.sleep(_POLL)
