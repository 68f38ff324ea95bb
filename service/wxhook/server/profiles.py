"""Follower profiles: user/info lookups (coalesced and batched) and OAuth-captured profiles.

Since 2021-12-27 user/info answers an empty nickname, so the greeting's name comes from
user/info when it is not empty, else from the profile the follower gave us through the
OAuth flow (sns/userinfo still returns it).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from typing import Any, Protocol

from cachetools import TTLCache

from wxhook.errors import WeChatAPIError
from wxhook.replies import xml_safe
from wxhook.server.logs import get_logger
from wxhook.server.waiting import settle_quietly
from wxhook.server.wechat_api import WeChatAPI
from wxhook.store import Store

REPO_WARN_EVERY = 60.0  # seconds between lines about a profile file that fails

_BATCH_MAX = 100  # batchget's limit


class ProfileRepo(Protocol):
    """Where OAuth-captured profiles are kept (they must survive a restart)."""

    async def get(self, openid: str) -> dict[str, str] | None:
        """The stored profile, or None."""

    async def put(self, openid: str, profile: dict[str, str]) -> None:
        """Store or update a profile."""


class StoreProfileRepo:
    """Profiles as hashes in the Store (Redis: shared and kept; memory: lost on restart)."""

    def __init__(self, store: Store, *, namespace: str) -> None:
        self.store = store
        self.prefix = namespace + "profile:"

    async def get(self, openid: str) -> dict[str, str] | None:
        data = await self.store.hgetall(self.prefix + openid)
        return data or None

    async def put(self, openid: str, profile: dict[str, str]) -> None:
        await self.store.hset(self.prefix + openid, profile)


class Profiles:
    """Nicknames for the greeting: cached, one call per openid, bursts batched."""

    def __init__(self, api: WeChatAPI, repo: ProfileRepo, *, ttl: float = 3600,
                 batch_window: float = 0.002, maxsize: int = 20_000,
                 max_batches_in_flight: int = 8) -> None:
        # 20,000 keep a campaign's followers of the last minutes for their SCANs and
        # re-follows, in bounded memory; a campaign brings new ones, looked up once.
        self.api = api
        self.repo = repo
        self.batch_window = batch_window
        self.log = get_logger("wxhook.profiles")
        self._repo_quiet_until = 0.0  # monotonic time before which a failing file is not logged
        self._cache: TTLCache[str, str] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl) if ttl > 0 else None
        )
        # Each waiter has a future of its own, answered by the batch: one waiter's deadline or
        # cancellation ends only its own wait, never a lookup that others share.
        self._inflight: dict[str, list[asyncio.Future[str | None]]] = {}
        # Batches overlap: one leaves when full or when its window closes, whatever is still
        # in flight, so a burst waits about one upstream latency, not one per batch ahead of
        # it. The bound keeps a flood from opening a connection per batch: over it, full
        # batches wait in line, and the open one goes on filling (up to 100) until a slot
        # frees, so a slow upstream gets fuller batches rather than a growing queue.
        self.max_batches_in_flight = max_batches_in_flight
        self._pending: list[str] = []            # the open batch
        self._pending_deadline: float | None = None
        self._window: asyncio.TimerHandle | None = None
        self._due = False                        # the open batch's window has closed
        self._full: collections.deque[tuple[list[str], float | None]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_ok = True
        self.lookups = 0  # upstream lookups started (single or batch), for tests and the bench
        self.in_flight = 0  # batches in flight now

    async def nickname(self, openid: str, *, deadline: float | None = None) -> str | None:
        """The follower's nickname, or None when nobody told us (never "")."""
        # "" is cached too: since 2021 user/info answers it for everyone, and a miss on it
        # would call user/info on every greeting.
        cache = self._cache
        if cache is not None and openid in cache:
            name: str | None = cache[openid]
        else:
            name = await self._looked_up(openid, deadline)
        if name:
            return name
        try:
            saved = await self.repo.get(openid)
        except Exception as exc:  # noqa: BLE001 - a profile file that fails costs the name only
            # Asked on nearly every greeting (user/info's name is empty): a file that cannot
            # be opened or read (a read-only directory, a corrupt file) must not cost every
            # new follower the greeting itself.
            # One line a minute: a broken file would otherwise write one per greeting.
            if (now := time.monotonic()) >= self._repo_quiet_until:
                self._repo_quiet_until = now + REPO_WARN_EVERY
                self.log.warning("profile_repo_unavailable", error=f"{type(exc).__name__}: {exc}",
                                 next_line_in_s=REPO_WARN_EVERY)
            return None
        return (saved or {}).get("nickname") or None

    def forget(self, openid: str) -> None:
        """Drop a cached lookup (after the follower updated their profile through OAuth)."""
        if self._cache is not None:
            self._cache.pop(openid, None)

    async def _looked_up(self, openid: str, deadline: float | None) -> str | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str | None] = loop.create_future()
        waiters = self._inflight.get(openid)
        if waiters is None:
            self._inflight[openid] = [fut]
            self._join(openid, deadline, loop)
        else:
            waiters.append(fut)
            if self._pending:  # (its openid may be in the open batch: let it bound that call)
                self._pending_deadline = _later(self._pending_deadline, deadline)
        if deadline is None:
            return await fut
        timer = loop.call_later(deadline - time.monotonic(), _give_up, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _join(self, openid: str, deadline: float | None, loop: asyncio.AbstractEventLoop) -> None:
        """Put an openid nobody is waiting for yet in the open batch."""
        # The latest waiter's deadline bounds the call (None: no bound); each waiter gives up
        # on its own, so one short of time never sinks the others' lookup.
        self._pending_deadline = (_later(self._pending_deadline, deadline) if self._pending
                                  else deadline)
        self._pending.append(openid)
        if len(self._pending) >= _BATCH_MAX:
            self._close_full()
        elif self._window is None and not self._due:
            self._window = loop.call_later(self.batch_window, self._window_closed)

    def _window_closed(self) -> None:
        self._window = None
        self._due = True
        self._dispatch()

    def _close_full(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._full.append((self._pending, self._pending_deadline))
        self._pending, self._due = [], False
        self._dispatch()

    def _dispatch(self) -> None:
        """Send what may leave: full batches first, then the open one once its window closed."""
        while self.in_flight < self.max_batches_in_flight:
            if self._full:
                batch, deadline = self._full.popleft()
            elif self._due and self._pending:
                batch, deadline = self._pending, self._pending_deadline
                self._pending, self._due = [], False
            else:
                return
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._lookup(batch, deadline))
            self._tasks.add(task)  # a pending task nobody references may be collected
            task.add_done_callback(functools.partial(self._landed, batch))

    def _landed(self, batch: list[str], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if task.cancelled():  # cancelled before it ran: its waiters still get an answer
            self._answer(batch, {})
        settle_quietly(task)
        self._dispatch()

    async def _lookup(self, batch: list[str], deadline: float | None) -> None:
        results: dict[str, str] = {}
        try:
            self.lookups += 1
            if len(batch) == 1:
                infos = [await self.api.user_info(batch[0], deadline=deadline)]
            elif not self._batch_ok:
                infos = await self._one_by_one(batch, deadline)
            else:
                try:
                    infos = await self.api.user_info_batch(batch, deadline=deadline)
                except WeChatAPIError as exc:
                    if exc.errmsg == "HTTP 404" or exc.errcode == 48001:
                        # An API without batchget (a proxy, a stand-in, an account not
                        # allowed it): one call each from now on, rather than no names.
                        self._batch_ok = False
                        self.log.warning("batchget_unavailable", errcode=exc.errcode,
                                         errmsg=exc.errmsg)
                    elif exc.errcode not in (40003, 40032):
                        raise
                    # One bad openid fails the whole batch: fall back to one call each.
                    infos = await self._one_by_one(batch, deadline)
            for info in infos:
                openid = info.get("openid")
                if isinstance(openid, str):
                    results[openid] = xml_safe(str(info.get("nickname") or ""))
        except WeChatAPIError as exc:
            self.log.warning("profile_lookup_failed", count=len(batch), errcode=exc.errcode,
                             errmsg=exc.errmsg, api=exc.api)
        finally:
            self._answer(batch, results)

    def _answer(self, batch: list[str], results: dict[str, str]) -> None:
        for openid in batch:
            name = results.get(openid)
            if name is not None and self._cache is not None:
                self._cache[openid] = name
            for fut in self._inflight.pop(openid, ()):
                if not fut.done():  # (a waiter that gave up or was cancelled is done)
                    fut.set_result(name or None)

    async def _one_by_one(self, batch: list[str], deadline: float | None) -> list[dict[str, Any]]:
        async def one(openid: str) -> dict[str, Any] | None:
            try:
                return await self.api.user_info(openid, deadline=deadline)
            except WeChatAPIError:
                return None
        found = await asyncio.gather(*(one(o) for o in batch))
        return [f for f in found if f is not None]


def _give_up(fut: asyncio.Future[str | None]) -> None:
    """A waiter's deadline: None for it, whatever its batch still brings the others."""
    if not fut.done():
        fut.set_result(None)


def _later(a: float | None, b: float | None) -> float | None:
    """The later of two deadlines, None being no deadline at all."""
    return None if a is None or b is None else max(a, b)
