"""OAuth2 web authorization: /oauth/login, /oauth/callback, /me, and profile refresh.

Since 2021-12-27 user/info answers an empty nickname; sns/userinfo (snsapi_userinfo) still
gives it, so a follower who signs in here is greeted by name again. The state parameter is
single-use (a set-nx key in the Store, so it holds across instances), expires, and is bound
to the browser that started the login by an HMAC-signed cookie (login CSRF).

One module of ~340 lines: the login, the callback, their rate limit and the session cookie
share their signing and are checked together when this flow is reviewed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import string
import time
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .config import Settings
from .errors import UpstreamUnavailable, WeChatAPIError
from .loglimit import LimitedLog
from .logs import get_logger, mask_openid
from .metrics import Metrics
from .pages import me_page, problem_page
from .profiles import ProfileRepo, Profiles
from .ratelimit import WindowLimit
from .replies import xml_safe
from .store.base import Store, own_slot
from .wechat_api import WeChatAPI

DEFAULT_NEXT = "/me"
SCOPES = ("snsapi_userinfo", "snsapi_base")
STATE_TTL = 600            # seconds a login may take, from /oauth/login to the callback
SESSION_TTL = 7 * 86400    # the signed session cookie
REFRESH_TTL = 30 * 86400   # WeChat's refresh_token lifetime; refreshing does not extend it
STATE_COOKIE = "wxhook_oauth_"  # + the state's first 12 characters: parallel logins coexist
SESSION_COOKIE = "wxhook_session"
_ALNUM = string.ascii_letters + string.digits
_STATE_RE = re.compile(r"[A-Za-z0-9]{1,128}")   # WeChat's rule for state
_CODE_ERRORS = {40029, 40163, 42003}             # invalid / already used / expired code
_DEAD_REFRESH = {40030, 42002}                   # refresh_token invalid / expired


def safe_next(raw: str | None) -> str:
    """`raw` if it is a plain path on this site, else the default page (no open redirect)."""
    if not raw or len(raw) > 2048 or " " in raw:
        return DEFAULT_NEXT
    layer = raw
    # Check every decoding layer: a proxy or framework may decode once more (%2F%2F -> //).
    for _ in range(4):
        # A space is fine once decoded ("/a%20b"); other whitespace and controls never are.
        if (not layer.startswith("/") or layer.startswith("//") or "\\" in layer
                or any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in layer)):
            return DEFAULT_NEXT
        decoded = unquote(layer)
        if decoded == layer:  # a next that starts another login would only loop
            return DEFAULT_NEXT if layer.startswith("/oauth/") else raw
        layer = decoded
    return DEFAULT_NEXT  # more encoding layers than any honest link has


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OAuth:
    """The web-authorization flow for one account, and refresh of what it captured."""

    def __init__(self, settings: Settings, *, api: WeChatAPI, store: Store, repo: ProfileRepo,
                 profiles: Profiles, namespace: str, metrics: Metrics,
                 clock: Callable[[], float] = time.time,
                 limit: WindowLimit | None = None) -> None:
        self.settings = settings
        self.api = api
        self.store = store
        self.repo = repo
        self.profiles = profiles
        self.prefix = namespace + "oauth:state:"
        self.clock = clock  # wall clock: signed timestamps are compared across processes
        self.secure = settings.public_base_url.startswith("https://")
        self._key = settings.session_secret.get_secret_value().encode()
        self.log = get_logger("wxhook.oauth")
        self.refusals = LimitedLog(self.log, metrics=metrics)
        # Each fresh signed state costs an exchange with the app secret (README: Security).
        self.limit = limit or WindowLimit(per_client=settings.oauth_limit_per_client,
                                          total=settings.oauth_limit_total)

    def routes(self) -> list[Route]:
        """/oauth/login, /oauth/callback and /me."""
        return [Route("/oauth/login", self.login, methods=["GET", "HEAD"]),
                Route("/oauth/callback", self.callback, methods=["GET"]),  # it spends the code
                Route("/me", self.me, methods=["GET", "HEAD"])]

    # -- signed values -----------------------------------------------------------------

    def sign(self, purpose: str, data: dict[str, Any]) -> str:
        """`data` as a cookie value that only holders of SESSION_SECRET can make."""
        body = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(purpose, body))}"

    def unsign(self, purpose: str, value: str | None, *, max_age: float) -> dict[str, Any] | None:
        """The data of a valid, unexpired signed value, else None."""
        try:
            body, mac = (value or "").split(".")
            if not hmac.compare_digest(_unb64(mac), self._mac(purpose, body)):
                return None
            data = json.loads(_unb64(body))
        except ValueError:  # bad base64, bad JSON, wrong number of dots
            return None
        if not isinstance(data, dict) or not isinstance(data.get("t"), int | float):
            return None
        return data if 0 <= self.clock() - data["t"] <= max_age else None

    def _mac(self, purpose: str, body: str) -> bytes:
        # The purpose is signed too: a state cookie can never pass for a session cookie.
        return hmac.new(self._key, f"{purpose}.{body}".encode(), hashlib.sha256).digest()

    def _cookie(self, resp: Response, name: str, value: str, *, max_age: int, path: str) -> None:
        resp.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="lax", secure=self.secure)

    def session_openid(self, request: Request) -> str | None:
        """The openid of the signed-in follower, or None."""
        data = self.unsign("session", request.cookies.get(SESSION_COOKIE), max_age=SESSION_TTL)
        openid = (data or {}).get("o")
        return openid if isinstance(openid, str) and openid else None

    # -- routes ------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """Redirect to WeChat's authorize page with a fresh state bound to this browser."""
        next_path = safe_next(request.query_params.get("next"))
        scope = request.query_params.get("scope") or SCOPES[0]
        if scope not in SCOPES:
            return problem_page("scope", retry_next=next_path)
        state = "".join(secrets.choice(_ALNUM) for _ in range(32))  # ~190 bits
        # Parameters in WeChat's documented order; connect_redirect=1 asks WeChat not to
        # call the redirect twice, and the fragment is required by the authorize page.
        params = urlencode([
            ("appid", self.settings.app_id),
            ("redirect_uri", self.settings.public_base_url + "/oauth/callback"),
            ("response_type", "code"), ("scope", scope), ("state", state),
            ("connect_redirect", "1")], quote_via=quote)
        url = f"{self.settings.oauth_base}/connect/oauth2/authorize?{params}#wechat_redirect"
        resp = RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
        cookie = self.sign("state", {"s": state, "n": next_path, "sc": scope,
                                     "t": int(self.clock())})
        self._cookie(resp, STATE_COOKIE + state[:12], cookie, max_age=STATE_TTL,
                     path="/oauth/callback")
        return resp

    async def callback(self, request: Request) -> Response:
        """Check the state, exchange the code, keep the profile, sign the follower in."""
        try:
            return await self._callback(request)
        except Exception:  # a friendly page, never a 5xx, whatever broke
            self.log.exception("oauth_callback_failed")
            return problem_page("error")

    async def _callback(self, request: Request) -> Response:
        q = request.query_params
        state, code = q.get("state", ""), q.get("code", "")
        if not _STATE_RE.fullmatch(state):
            return problem_page("invalid")
        cookie_name = STATE_COOKIE + state[:12]
        started = self.unsign("state", request.cookies.get(cookie_name), max_age=STATE_TTL)
        if started is not None and started.get("s") != state:
            started = None
        next_path = safe_next(started.get("n") if started else None)
        if not code:
            # The follower tapped "refuse" (or the link was cut short).
            return problem_page("cancelled", retry_next=next_path)
        client = request.client.host if request.client else ""
        if started is not None and not self.limit.allow(client):
            # Counted before the Store is asked: a callback with a signed state may spend a
            # code exchange (WeChat's repeated redirect counts too; it is no more than two).
            self.refusals.warning("limit", "oauth_rate_limited", client=client)
            resp = problem_page("busy", retry_next=next_path)
            resp.headers["retry-after"] = str(int(self.limit.window))
            return resp
        key = own_slot(self.prefix, state)  # a forged state picks no slot of its own
        record = {"status": "pending", "code": _digest(code)}
        if started is not None and await self.store.set(key, json.dumps(record).encode(),
                                                        ttl=STATE_TTL, nx=True):
            return await self._complete(key, record, started, code, cookie_name)
        if await self.store.get(key) is not None:
            return await self._repeat(request, key, state, code, started, cookie_name)
        if request.cookies.get(cookie_name):
            # Signed but too old (or tampered with): the ten minutes are over.
            return problem_page("expired")
        # No cookie for this state: forged, or started in another browser (login CSRF).
        self.log.warning("oauth_state_rejected", reason="no_matching_cookie")
        return problem_page("forged")

    async def _complete(self, key: str, record: dict[str, str], started: dict[str, Any],
                        code: str, cookie_name: str) -> Response:
        next_path = safe_next(started.get("n"))
        try:
            openid, scope = await self.capture(code)
        except Exception as exc:
            # Settle the record so a second call of the redirect stops waiting for this one.
            await self.store.set(key, json.dumps({**record, "status": "failed"}).encode(),
                                 ttl=STATE_TTL)
            if not isinstance(exc, WeChatAPIError):
                raise
            return self._failure(exc, next_path)
        await self.store.set(key, json.dumps({**record, "status": "done", "openid": openid,
                                              "next": next_path}).encode(), ttl=STATE_TTL)
        self.log.info("oauth_login", openid=mask_openid(openid), scope=scope)
        return self._signed_in(openid, started["s"], next_path, cookie_name)

    async def _repeat(self, request: Request, key: str, state: str, code: str,
                      started: dict[str, Any] | None, cookie_name: str) -> Response:
        # WeChat sometimes calls the redirect twice: the second call finds the state used.
        # The browser that completed this exact state and code just goes on to `next`.
        session = self.unsign("session", request.cookies.get(SESSION_COOKIE),
                              max_age=SESSION_TTL)
        same_browser = started is not None or (session or {}).get("st") == state
        record: Any = None
        end = time.monotonic() + 2 * self.settings.http_timeout + 1.0
        while same_browser and time.monotonic() < end:  # the first call may still be running
            raw = await self.store.get(key)
            record = json.loads(raw) if raw else None
            if not isinstance(record, dict) or record.get("status") != "pending":
                break
            await asyncio.sleep(0.05)
        if (isinstance(record, dict) and record.get("status") == "done"
                and hmac.compare_digest(str(record.get("code")), _digest(code))):
            return self._signed_in(str(record["openid"]), state,
                                   safe_next(str(record.get("next"))), cookie_name)
        self.log.warning("oauth_state_rejected", reason="reused")
        return problem_page("reused")

    def _signed_in(self, openid: str, state: str, next_path: str,
                   cookie_name: str) -> Response:
        # 303: the browser GETs `next`, whatever the method of this request.
        resp = RedirectResponse(next_path, status_code=303, headers={"cache-control": "no-store"})
        value = self.sign("session", {"o": openid, "st": state, "t": int(self.clock())})
        self._cookie(resp, SESSION_COOKIE, value, max_age=SESSION_TTL, path="/")
        resp.delete_cookie(cookie_name, path="/oauth/callback", httponly=True, samesite="lax",
                           secure=self.secure)
        return resp

    def _failure(self, exc: WeChatAPIError, next_path: str) -> Response:
        self.log.warning("oauth_failed", errcode=exc.errcode, api=exc.api)
        if exc.errcode in _CODE_ERRORS:
            return problem_page("code", retry_next=next_path)
        if exc.errcode == 48001:
            return problem_page("permission", retry_next=next_path, retry_scope=SCOPES[0])
        if isinstance(exc, UpstreamUnavailable) or exc.errcode == -1:
            return problem_page("upstream", retry_next=next_path)
        return problem_page("failed", retry_next=next_path)

    async def me(self, request: Request) -> Response:
        """Hello, <nickname>, for a signed-in follower; a login link otherwise."""
        openid = self.session_openid(request)
        profile = await self.repo.get(openid) if openid else None
        return me_page(profile, logged_in=openid is not None)

    # -- profiles ----------------------------------------------------------------------

    async def capture(self, code: str) -> tuple[str, str]:
        """Exchange a code, fetch sns/userinfo when allowed, store the profile."""
        token = await self.api.oauth_exchange(code)
        openid, scope = str(token.get("openid") or ""), str(token.get("scope") or "")
        if not openid or not token.get("access_token"):
            raise UpstreamUnavailable(None, "token answer without openid", api="oauth_token")
        now = int(self.clock())
        await self._save(openid, token, now, refresh_issued_at=now)
        return openid, scope

    async def refresh_profile(self, openid: str) -> dict[str, str] | None:
        """Re-read a follower's profile with the kept tokens; None when a new login is needed."""
        saved = await self.repo.get(openid)
        if not saved or not saved.get("refresh_token"):
            return None
        now = int(self.clock())
        if now - int(saved.get("refresh_issued_at") or 0) >= REFRESH_TTL:
            await self.repo.put(openid, {"refresh_token": "", "access_token": ""})
            return None
        token: dict[str, Any] = {"access_token": saved.get("access_token", ""),
                                 "scope": saved.get("scope", ""), "openid": openid}
        # A web token lives 2 hours: ask sns/auth before spending a refresh on a new one.
        fresh = now < int(saved.get("access_expires_at") or 0)
        if not (fresh and token["access_token"]
                and await self.api.sns_auth(token["access_token"], openid)):
            try:
                token = await self.api.oauth_refresh(saved["refresh_token"])
            except WeChatAPIError as exc:
                if exc.errcode not in _DEAD_REFRESH:
                    raise
                await self.repo.put(openid, {"refresh_token": "", "access_token": ""})
                return None
        await self._save(openid, token, now)
        return await self.repo.get(openid)

    async def _save(self, openid: str, token: dict[str, Any], now: int, *,
                    refresh_issued_at: int | None = None) -> None:
        scope = str(token.get("scope") or "")
        profile = {"openid": openid, "scope": scope, "updated_at": str(now),
                   "access_token": str(token["access_token"])}
        if token.get("expires_in"):
            profile["access_expires_at"] = str(now + int(token["expires_in"]) - 60)
        if token.get("refresh_token"):
            profile["refresh_token"] = str(token["refresh_token"])
        if refresh_issued_at is not None:
            profile["refresh_issued_at"] = str(refresh_issued_at)
        if token.get("unionid"):
            profile["unionid"] = str(token["unionid"])
        if "snsapi_userinfo" in scope.split(","):
            info = await self.api.sns_userinfo(str(token["access_token"]), openid)
            profile["nickname"] = xml_safe(str(info.get("nickname") or ""))
            profile["headimgurl"] = str(info.get("headimgurl") or "")
            if info.get("unionid"):
                profile["unionid"] = str(info["unionid"])
        await self.repo.put(openid, profile)
        # The greeting caches user/info answers; drop this one so the new name shows.
        self.profiles.forget(openid)


def _digest(code: str) -> str:
    # Only a digest of the code is kept in the Store: the code itself is a credential.
    return hashlib.sha256(code.encode()).hexdigest()[:32]
