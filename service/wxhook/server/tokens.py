"""The global access token: one per deployment, single-flight, compare-and-expire.

Two processes that each fetch a token kill each other's (40001): the first cause of
"works on my laptop, breaks in production" in every WeChat SDK. So the token lives in the
store, one process at a time refreshes it under a lock, the others wait and read it, and a
token that failed is expired only if it is still the current one.

A token rejected again right after a refresh (40001 for a token fetched seconds ago: its
calls carry a stale copy, or another system keeps replacing it) is not fetched again at
once: the quota is the account's, shared with every other system using the appid. The
deployment backs off, doubling the pause while it goes on, and says so in the log, /readyz
and wxhook_token_refreshes_total{reason="rejected_again"}. The run of rejections and the
pause live in the store next to the token, so an instance that did not see the rejection
pauses too rather than fetch the token its peer just gave up on.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from wxhook.errors import (
    CONFIG_HINTS,
    ConfigurationError,
    QuotaExceeded,
    TokenInvalid,
    UpstreamUnavailable,
    WeChatAPIError,
)
from wxhook.server.logs import get_logger
from wxhook.server.metrics import Metrics
from wxhook.server.waiting import settle_quietly
from wxhook.server.wechat_api import WeChatAPI, WeChatHTTP
from wxhook.store import Store, same_slot

if TYPE_CHECKING:
    import httpx

    from wxhook.server.config import Settings

Fetch = Callable[[], Awaitable[tuple[str, int]]]


class TokenManager:
    """Hands out the current global token; refreshes it once across the whole deployment."""

    def __init__(self, store: Store, fetch: Fetch, *, namespace: str, metrics: Metrics,
                 refresh_ahead: float = 300.0, config_backoff: float = 20.0,
                 failure_backoff: float = 1.0, lock_ttl: float = 10.0,
                 reject_window: float = 60.0, reject_backoff: float = 30.0,
                 max_reject_backoff: float = 900.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._fetch = fetch
        self._key = namespace + "token"
        # In the token's slot on a cluster; the token key keeps its name across versions.
        self._lock_key = same_slot(self._key, ":lock")
        # "rejections|paused_until": the run of young tokens rejected, for every instance.
        self._rejected_key = same_slot(self._key, ":rejected")
        self.metrics = metrics
        self.refresh_ahead = refresh_ahead
        self.config_backoff = config_backoff
        self.failure_backoff = failure_backoff
        self.lock_ttl = lock_ttl
        self.reject_window = reject_window  # a token rejected this young was just fetched
        self.reject_backoff = reject_backoff
        self.max_reject_backoff = max_reject_backoff
        self.clock = clock
        self.log = get_logger("wxhook.tokens")
        self._token: str | None = None
        self._raw: bytes | None = None       # the stored value our token came from
        self._expires_at = 0.0
        self._fetched_at = 0.0
        self._bad: str | None = None         # last token that failed: never adopt it again
        self._flight: asyncio.Task[str] | None = None
        self.last_error: WeChatAPIError | None = None
        self._error_until = 0.0
        self.fetches = 0                     # upstream token requests made by this process

    async def get(self, *, deadline: float | None = None) -> str:
        """The current token; waits for a refresh only when there is no usable one."""
        now = self.clock()
        token = self._token
        if token is not None and now < self._expires_at - self.refresh_ahead:
            self.metrics.token_age.set(now - self._fetched_at)
            return token
        if token is not None and now < self._expires_at - 30:
            self._start("ahead")  # refresh in the background, keep serving the current one
            return token
        flight = self._start("expired" if token else "invalidated" if self._bad else "cold")
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(flight), timeout)
        except TimeoutError:
            raise UpstreamUnavailable(None, "token refresh still running at the deadline",
                                      api="token") from None

    @property
    def current(self) -> str | None:
        """This process's token, as cached (None: none yet, or expired)."""
        return self._token

    async def follow_store(self) -> None:
        """Take the stored token when it is another than this process's.

        A peer that refreshed (its own 40001, a report to the token authority) replaced the
        stored token; this process would go on using its older copy until a call of its own
        failed. Compared with the stored one, a reported token is expired (or found stale)
        exactly as it would be on the instance that stored it.
        """
        raw = await self.store.get(self._key)
        if raw == self._raw:
            return
        if raw is None and self._raw is not None and await self._put_back(self._raw):
            return
        # Replaced by a peer's, or expired by a peer (rejected): not ours to hand out any more.
        self._token, self._raw, self._expires_at = None, None, 0.0
        await self._adopt_stored(30.0)  # a peer's, unless it is the one that failed here

    async def _put_back(self, raw: bytes) -> bool:
        """Store this process's token again if the store lost it; False when a peer expired
        it (a rejection is recorded) or stored another first.

        Gone with no rejection recorded means the store lost it, not a peer: Redis restarted
        empty, or is unreachable and this process serves from its own memory. Fetching
        another would cut every peer's copy short (a classic token ends the one before it),
        so the one still valid stays the deployment's.
        """
        left = self._expires_at - self.clock() - 30
        if left <= 0 or (await self._rejection_run())[0]:
            return False
        return await self.store.set(self._key, raw, ttl=left, nx=True)

    async def lease(self, *, deadline: float | None = None,
                    followed: bool = False) -> tuple[str, int]:
        """The token every instance uses now, and the whole seconds it has left;
        `followed`: the caller has just called follow_store() (no second read)."""
        if not followed:
            await self.follow_store()
        while True:
            token = await self.get(deadline=deadline)
            if token == self._token:  # not expired again while we waited for it
                return token, max(0, int(self._expires_at - self.clock()))

    async def invalidate(self, failed: str) -> bool:
        """Expire `failed` locally and in the store, but only if it is still the current one.

        False when a fresh token would only be rejected again (this one was fetched moments
        ago, right after the one before it was rejected): the manager backs off instead.
        """
        self._bad = failed
        if self._token != failed:
            return True  # an older token (or a peer's): the current one may well work
        now = self.clock()
        young = now - self._fetched_at < self.reject_window
        raw = self._raw
        self._token, self._raw, self._expires_at = None, None, 0.0
        if raw is None or not await self.store.delete_if(self._key, raw):
            # A peer expired it first and counted the rejection: its pause is ours too.
            return not await self._paused()
        # Expired here for the whole deployment: counted here, once.
        rejections = (await self._rejection_run())[0] + 1 if young else 1
        pause = 0.0 if rejections < 2 else min(
            self.reject_backoff * 2 ** (rejections - 2), self.max_reject_backoff)
        # Kept past the pause: a token fetched after it and rejected at once goes on the run.
        await self.store.set(self._rejected_key, f"{rejections}|{now + pause}".encode(),
                             ttl=pause + self.max_reject_backoff)
        if not pause:
            return True
        self._pause(now + pause)
        self.metrics.token_refreshes.labels("rejected_again", "backoff").inc()
        self.log.error("token_rejected_after_refresh", rejections=rejections,
                       retry_in_s=pause, fix="check that no other system refreshes this "
                       "appid's token with force_refresh, and that the appid and secret "
                       "belong to the account WeChat pushes for")
        return False

    async def _rejection_run(self) -> tuple[int, float]:
        """Young tokens rejected in a row, deployment-wide, and until when refreshes pause."""
        raw = await self.store.get(self._rejected_key)
        try:
            count, until = (raw or b"0|0").decode().split("|")
            return int(count), float(until)
        except ValueError:
            return 0, 0.0

    async def _paused(self) -> bool:
        """Whether refreshes pause now (an instance's rejection pauses them all); noted as
        this manager's last error, for /readyz and Retry-After."""
        until = (await self._rejection_run())[1]
        if until <= self.clock():
            return False
        self._pause(until)
        return True

    def _pause(self, until: float) -> None:
        wait = until - self.clock()
        self.last_error = TokenInvalid(40001, "the access token was rejected right after a "
                                       f"refresh; the next refresh in {wait:.0f} s", api="token")
        self._error_until = until

    def status(self) -> dict[str, object]:
        """For /readyz and `wxhook check`: is a token cached, and what failed last."""
        now = self.clock()
        out: dict[str, object] = {"cached": self._token is not None and now < self._expires_at}
        if self._token is not None:
            out["expires_in"] = int(self._expires_at - now)
        if self.last_error is not None:
            out["error"] = {"errcode": self.last_error.errcode, "errmsg": self.last_error.errmsg}
            hint = CONFIG_HINTS.get(self.last_error.errcode or 0)
            if hint:
                out["fix"] = hint
            wait = self._error_until - self.clock()
            if wait > 0:
                out["retry_in_s"] = round(wait, 1)
        return out

    def _start(self, reason: str) -> asyncio.Task[str]:
        if self._flight is None or self._flight.done():
            self._flight = asyncio.get_running_loop().create_task(self._refresh(reason))
            self._flight.add_done_callback(settle_quietly)
        return self._flight

    async def _refresh(self, reason: str) -> str:
        if self.last_error is not None and self.clock() < self._error_until:
            # No retry storm: a wrong secret or whitelist costs a few calls a minute at most.
            raise self._last_error_again()
        deadline = time.monotonic() + self.lock_ttl * 2
        # An ahead-of-time refresh must not settle for the token it is replacing.
        margin = self.refresh_ahead if reason == "ahead" else 30.0
        while True:
            if await self._adopt_stored(margin):
                return self._token  # type: ignore[return-value]
            fence = secrets.token_hex(8).encode()
            if await self.store.set(self._lock_key, fence, ttl=self.lock_ttl, nx=True):
                try:
                    if await self._adopt_stored(margin):  # a peer finished just before we locked
                        return self._token  # type: ignore[return-value]
                    if await self._paused():  # a peer's rejected token: not fetched again yet
                        raise self._last_error_again()
                    return await self._fetch_and_store(reason)
                finally:
                    await self.store.delete_if(self._lock_key, fence)
            # A peer is refreshing: wait for its token. If it died, its lock expires.
            if time.monotonic() > deadline:
                raise UpstreamUnavailable(None, "timed out waiting for a peer's token refresh",
                                          api="token")
            await asyncio.sleep(0.05)

    def _last_error_again(self) -> WeChatAPIError:
        """The last error as a fresh exception: re-raising one object grows its traceback
        forever."""
        e = self.last_error
        assert e is not None
        return type(e)(e.errcode, e.errmsg, api=e.api)

    async def _adopt_stored(self, margin: float) -> bool:
        raw = await self.store.get(self._key)
        if raw is None:
            return False
        try:
            token, expires_at, fetched_at = raw.decode().split("|")
            exp, fetched = float(expires_at), float(fetched_at)
        except ValueError:
            return False
        if token == self._bad or self.clock() >= exp - margin:
            return False
        self._token, self._raw, self._expires_at, self._fetched_at = token, raw, exp, fetched
        return True

    async def _fetch_and_store(self, reason: str) -> str:
        self.fetches += 1
        try:
            token, expires_in = await self._fetch()
        except WeChatAPIError as exc:
            self.last_error = exc
            # A spent token quota (45009 on /cgi-bin/token: 2,000 a day) heals no faster than
            # a wrong secret: asking again every second would only burn tomorrow's quota too.
            backoff = self.config_backoff if isinstance(exc, ConfigurationError | QuotaExceeded) \
                else self.failure_backoff
            self._error_until = self.clock() + backoff
            self.metrics.token_refreshes.labels(reason, "error").inc()
            self.log.error("token_refresh_failed", reason=reason, errcode=exc.errcode,
                           errmsg=exc.errmsg, fix=CONFIG_HINTS.get(exc.errcode or 0),
                           retry_in_s=backoff)
            raise
        now = self.clock()
        expires_at = now + expires_in
        raw = f"{token}|{expires_at}|{now}".encode()
        await self.store.set(self._key, raw, ttl=max(1.0, expires_in - 30))
        self._token, self._raw, self._expires_at, self._fetched_at = token, raw, expires_at, now
        self.last_error = None
        self.metrics.token_refreshes.labels(reason, "ok").inc()
        self.metrics.token_age.set(0)
        self.log.info("token_refreshed", reason=reason, expires_in=expires_in)
        return token


def api_with_tokens(http: httpx.AsyncClient, settings: Settings, *, store: Store,
                    namespace: str, metrics: Metrics,
                    clock: Callable[[], float] = time.time) -> tuple[WeChatAPI, TokenManager]:
    """The API client and the token manager it draws its global token from."""
    tokens = TokenManager(store, WeChatHTTP(http, settings, metrics=metrics).fetch_token,
                          namespace=namespace, metrics=metrics, clock=clock)
    return WeChatAPI(http, settings, metrics=metrics, tokens=tokens), tokens
