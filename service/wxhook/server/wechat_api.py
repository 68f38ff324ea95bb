"""Async WeChat API client: errcodes to exceptions, timeouts, bounded retries, circuits."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson

from wxhook.errors import (
    ConfigurationError,
    QuotaExceeded,
    TokenInvalid,
    UpstreamUnavailable,
    WeChatAPIError,
    api_error,
)
from wxhook.server.logs import get_logger, upstream_trace
from wxhook.server.metrics import Metrics

if TYPE_CHECKING:
    from wxhook.server.config import Settings

_BUSY_RETRIES = 2          # errcode -1 "system busy": at most this many extra tries
_BUSY_BACKOFF = 0.1        # seconds, doubled each try, never past the deadline
_CIRCUIT_SECONDS = 60.0    # a spent quota (45009/45011) suspends that API this long
_JSON_BODY = {"content-type": "application/json"}


class NotSent(UpstreamUnavailable):
    """The call was not processed, so repeating it cannot deliver a message twice."""
    # Raised for refused connections, connect/pool timeouts (nothing was sent) and HTTP 5xx
    # (WeChat's front answered instead of the API). A read timeout is NOT this: it may have
    # been processed, and message/custom/send has no idempotency key.


def _loads(content: bytes) -> Any:
    """orjson, not resp.json(): a batchget answer of 100 profiles is ~30 KB, parsed on the
    subscribe path (bench/README.md, "Measured choices"). orjson refuses a lone surrogate's
    escape, which WeChat sends in nicknames cut inside an emoji: the json module reads
    those (replies.xml_safe cleans them later), so the answer is not lost."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS settings (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), built once.

    A client builds its own context otherwise, reading the whole CA bundle each time: with
    an accounts file every account has its own client, and a thousand copies of the bundle
    would cost a thousand times its memory, and each account's first push that read.
    """
    return httpx.create_ssl_context()


def new_http_client(*, timeout: float = 3.0) -> httpx.AsyncClient:
    """An account's client: explicit timeouts, a pool sized for subscribe bursts."""
    return httpx.AsyncClient(
        verify=_tls(),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50,
                            keepalive_expiry=30.0),
        headers={"user-agent": "wxhook"},
    )


class TokenProvider(Protocol):
    """Where token-bearing calls get the global access token (tokens.TokenManager)."""

    async def get(self, *, deadline: float | None = None) -> str:
        """The current token."""

    async def invalidate(self, failed: str) -> bool:
        """WeChat rejected `failed`; True when a retry with a fresh token is worth it."""


class WeChatHTTP:
    """One HTTP exchange with the WeChat API, and the calls that need no global token
    (fetching it, OAuth): what the token manager is built on."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, *, metrics: Metrics) -> None:
        self.http = http
        self.settings = settings
        self.base = settings.api_base
        self.metrics = metrics
        self.log = get_logger("wxhook.api")
        self._no_stable_token = False

    # -- one HTTP exchange -------------------------------------------------------------

    async def request(self, method: str, path: str, *, api: str,
                      params: dict[str, str] | None = None, json: Any = None,
                      deadline: float | None = None) -> dict[str, Any]:
        """One HTTP call; returns the JSON object or raises a WeChatAPIError subclass."""
        timeout = self.settings.http_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0.01:
                raise UpstreamUnavailable(None, "no time left before the deadline", api=api)
        started = time.perf_counter()
        errcode: int | None = None
        try:
            # httpx's timeout is per phase (pool, connect, write, read); bound the whole call.
            async with asyncio.timeout(timeout):
                resp = await self.http.request(
                    method, self.base + path, params=params, timeout=timeout,
                    content=None if json is None else orjson.dumps(json),
                    headers=None if json is None else _JSON_BODY)
            if resp.status_code >= 400:
                errcode = -resp.status_code
                cls = NotSent if resp.status_code >= 500 else UpstreamUnavailable
                raise cls(None, f"HTTP {resp.status_code}", api=api)
            try:
                data = _loads(resp.content)
            except ValueError:
                errcode = -1000
                raise UpstreamUnavailable(None, "answer is not JSON", api=api) from None
            if not isinstance(data, dict):
                errcode = -1000
                raise UpstreamUnavailable(None, "answer is not a JSON object", api=api)
            errcode = int(data.get("errcode") or 0)
            if errcode:
                raise api_error(errcode, str(data.get("errmsg", "")), api=api)
            return data
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            errcode = -503
            raise NotSent(None, f"{type(exc).__name__}", api=api) from None
        except (httpx.TimeoutException, TimeoutError):
            # Sent, maybe processed, answer lost: not safe to repeat a non-idempotent call.
            errcode = -408
            raise UpstreamUnavailable(None, "timed out", api=api) from None
        except httpx.HTTPError as exc:
            errcode = -503
            # The exception text can carry the URL, and the URL carries secrets: keep the type.
            raise UpstreamUnavailable(None, f"{type(exc).__name__}", api=api) from None
        except RuntimeError:
            # httpx's "client has been closed": its owner (a reload retiring the account,
            # shutdown) closed it under this call. Nothing was sent; a caller gets "upstream
            # unavailable" like any other unreachable API, never a crash of its own.
            if not self.http.is_closed:
                raise
            errcode = -503
            raise NotSent(None, "HTTP client closed", api=api) from None
        finally:
            self.metrics.upstream_calls.labels(api, str(errcode)).inc()
            self.metrics.upstream_latency.labels(api).observe(time.perf_counter() - started)
            trace = upstream_trace.get()
            if trace is not None:
                trace.append((api, errcode))

    # -- the global token --------------------------------------------------------------

    async def fetch_token(self) -> tuple[str, int]:
        """A global access token and its lifetime, from stable_token (default) or token."""
        s = self.settings
        secret = s.app_secret.get_secret_value()
        data: dict[str, Any] | None = None
        if s.token_endpoint == "stable" and not self._no_stable_token:
            try:
                data = await self.request(
                    "POST", "/cgi-bin/stable_token", api="stable_token",
                    json={"grant_type": "client_credential", "appid": s.app_id,
                          "secret": secret, "force_refresh": False},
                )
            except UpstreamUnavailable as exc:
                # WeChat always has it; a proxy or stand-in API may not. Then the classic
                # endpoint, said loudly, rather than greetings that lose their names.
                if exc.errmsg != "HTTP 404":
                    raise
                self._no_stable_token = True
                self.log.warning("stable_token_missing", api_base=self.base,
                                 fix="this API has no /cgi-bin/stable_token: using "
                                     "/cgi-bin/token (set WXHOOK_TOKEN_ENDPOINT=classic)")
        if data is None:
            data = await self.request(
                "GET", "/cgi-bin/token", api="token",
                params={"grant_type": "client_credential", "appid": s.app_id, "secret": secret},
            )
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise UpstreamUnavailable(None, "token answer without access_token", api="token")
        return token, int(data.get("expires_in") or 7200)

    # -- OAuth (per-follower web tokens; never the global token) -----------------------

    async def oauth_exchange(self, code: str) -> dict[str, Any]:
        """sns/oauth2/access_token: a code works once and dies after 5 minutes."""
        s = self.settings
        return await self.request("GET", "/sns/oauth2/access_token", api="oauth_token", params={
            "appid": s.app_id, "secret": s.app_secret.get_secret_value(), "code": code,
            "grant_type": "authorization_code"})

    async def oauth_refresh(self, refresh_token: str) -> dict[str, Any]:
        """sns/oauth2/refresh_token: a refresh token lives 30 days."""
        return await self.request("GET", "/sns/oauth2/refresh_token", api="oauth_refresh", params={
            "appid": self.settings.app_id, "grant_type": "refresh_token",
            "refresh_token": refresh_token})

    async def sns_userinfo(self, web_token: str, openid: str) -> dict[str, Any]:
        """sns/userinfo: still returns nickname and headimgurl (snsapi_userinfo only)."""
        return await self.request("GET", "/sns/userinfo", api="sns_userinfo", params={
            "access_token": web_token, "openid": openid, "lang": "zh_CN"})

    async def sns_auth(self, web_token: str, openid: str) -> bool:
        """sns/auth: is this web token still valid?"""
        try:
            await self.request("GET", "/sns/auth", api="sns_auth",
                               params={"access_token": web_token, "openid": openid})
        except WeChatAPIError:
            return False
        return True



class WeChatAPI(WeChatHTTP):
    """The API calls wxhook makes; every token-bearing call goes through `call()`."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, *, metrics: Metrics,
                 tokens: TokenProvider) -> None:
        super().__init__(http, settings, metrics=metrics)
        self.tokens = tokens
        self._circuit_until: dict[str, float] = {}

    # -- token-bearing calls -----------------------------------------------------------

    async def call(self, method: str, path: str, *, api: str,
                   params: dict[str, str] | None = None, json: Any = None,
                   deadline: float | None = None) -> dict[str, Any]:
        """A call with the global token: one retry on a dead token, bounded retries on -1."""
        until = self._circuit_until.get(api, 0.0)
        if until > time.monotonic():
            raise UpstreamUnavailable(None, "circuit open after a quota error", api=api)
        token_retry_done = False
        busy_tries = 0
        while True:
            token = await self.tokens.get(deadline=deadline)
            try:
                return await self.request(method, path, api=api,
                                          params={**(params or {}), "access_token": token},
                                          json=json, deadline=deadline)
            except TokenInvalid:
                # Once per call, and not at all when the token manager is backing off
                # (a token rejected right after a refresh would only be fetched again).
                if not await self.tokens.invalidate(token) or token_retry_done:
                    raise
                token_retry_done = True
            except QuotaExceeded as exc:
                self._open_circuit(api, exc)
                raise
            except WeChatAPIError as exc:
                if exc.errcode != -1 or busy_tries >= _BUSY_RETRIES:
                    raise
                pause = _BUSY_BACKOFF * (2 ** busy_tries)
                if deadline is not None and time.monotonic() + pause >= deadline - 0.05:
                    raise
                busy_tries += 1
                await asyncio.sleep(pause)

    def _open_circuit(self, api: str, exc: WeChatAPIError) -> None:
        self._circuit_until[api] = time.monotonic() + _CIRCUIT_SECONDS
        self.metrics.circuit_open.labels(api).set(1)
        self.log.warning("circuit_open", api=api, errcode=exc.errcode, seconds=_CIRCUIT_SECONDS)
        asyncio.get_running_loop().call_later(_CIRCUIT_SECONDS, self._maybe_close_circuit, api)

    def _maybe_close_circuit(self, api: str) -> None:
        # A circuit opened again meanwhile has its own, later timer: leave the gauge up.
        if self._circuit_until.get(api, 0.0) <= time.monotonic():
            self.metrics.circuit_open.labels(api).set(0)

    def circuits(self) -> dict[str, float]:
        """APIs currently suspended, with seconds left."""
        now = time.monotonic()
        return {api: round(t - now, 1) for api, t in self._circuit_until.items() if t > now}

    async def user_info(self, openid: str, *, deadline: float | None = None) -> dict[str, Any]:
        """cgi-bin/user/info (nickname has come back empty since 2021-12-27)."""
        return await self.call("GET", "/cgi-bin/user/info", api="user_info",
                               params={"openid": openid, "lang": "zh_CN"}, deadline=deadline)

    async def user_info_batch(self, openids: list[str], *,
                              deadline: float | None = None) -> list[dict[str, Any]]:
        """cgi-bin/user/info/batchget, at most 100 openids."""
        body = {"user_list": [{"openid": o, "lang": "zh_CN"} for o in openids[:100]]}
        data = await self.call("POST", "/cgi-bin/user/info/batchget", api="user_info_batch",
                               json=body, deadline=deadline)
        infos = data.get("user_info_list")
        return [i for i in infos if isinstance(i, dict)] if isinstance(infos, list) else []

    async def send_custom(self, payload: dict[str, Any], *,
                          deadline: float | None = None) -> None:
        """message/custom/send: a reply outside the passive-reply window."""
        await self.call("POST", "/cgi-bin/message/custom/send", api="custom_send",
                        json=payload, deadline=deadline)

    async def callback_ips(self) -> list[str]:
        """The addresses WeChat pushes from."""
        data = await self.call("GET", "/cgi-bin/getcallbackip", api="callback_ip")
        ips = data.get("ip_list")
        return [str(i) for i in ips] if isinstance(ips, list) else []


__all__ = ["ConfigurationError", "NotSent", "TokenProvider", "WeChatAPI", "WeChatHTTP",
           "new_http_client"]
