"""OAuth2 web authorization: /oauth/login, /oauth/callback, /me, and profile refresh.

With an accounts file each account has its own: /oauth/{name}/login, /oauth/{name}/callback
and /me/{name}, its own appid and secret, a session secret of its own (account_settings)
and cookies named after it, scoped to its own paths; a state started for one account is
refused at another's callback (another key signed it, another cookie carries it, another
namespace holds its single-use record).

Since 2021-12-27 user/info answers an empty nickname; sns/userinfo (snsapi_userinfo) still
gives it, so a follower who signs in here is greeted by name again. The state parameter is
single-use (a set-nx key in the Store, so it holds across instances), expires, and is bound
to the browser that started the login by a signed cookie (login CSRF; its bounds are in
oauth_state.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import string
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from wxhook.errors import UpstreamUnavailable, WeChatAPIError
from wxhook.replies import xml_safe
from wxhook.server.config import Settings
from wxhook.server.loglimit import LimitedLog
from wxhook.server.logs import get_logger, mask_openid
from wxhook.server.metrics import Metrics
from wxhook.server.oauth_state import (
    COOKIE,
    MAX_NEXT_BYTES,
    PATH,
    Login,
    LoginCookie,
    next_size,
    safe_next,
    serializer,
    verified,
)
from wxhook.server.pages import me_page, problem_page
from wxhook.server.profiles import ProfileRepo, Profiles
from wxhook.server.ratelimit import WindowLimit
from wxhook.server.wechat_api import WeChatAPI
from wxhook.store import Store, own_slot

SCOPES = ("snsapi_userinfo", "snsapi_base")
STATE_TTL = 600            # seconds a login may take, from /oauth/login to the callback
SESSION_TTL = 7 * 86400    # the signed session cookie
REFRESH_TTL = 30 * 86400   # WeChat's refresh_token lifetime; refreshing does not extend it
SESSION_COOKIE = "wxhook_session"
_ALNUM = string.ascii_letters + string.digits
_STATE_RE = re.compile(r"[A-Za-z0-9]{1,128}")   # WeChat's rule for state
_CODE_ERRORS = {40029, 40163, 42003}             # invalid / already used / expired code
_DEAD_REFRESH = {40030, 42002}                   # refresh_token invalid / expired


class OAuth:
    """The web-authorization flow for one account, and refresh of what it captured."""

    def __init__(self, settings: Settings, *, api: WeChatAPI, store: Store, repo: ProfileRepo,
                 profiles: Profiles, namespace: str, metrics: Metrics,
                 clock: Callable[[], float] = time.time,
                 limit: WindowLimit | None = None, account: str | None = None,
                 refusals: LimitedLog | None = None) -> None:
        self.settings = settings
        # None: the one account of WECHAT_*, at /oauth/login as ever; else the named account
        # of the accounts file, at /oauth/{account}/login.
        self.account = account
        base = "/oauth" if account is None else f"/oauth/{account}"
        self.login_path, self.callback_path = base + "/login", base + "/callback"
        self.me_path = "/me" if account is None else f"/me/{account}"
        self.state_cookie = COOKIE if account is None else f"{COOKIE}_{account}"
        self.state_path = PATH if account is None else base + "/"
        self.session_cookie = SESSION_COOKIE if account is None else f"{SESSION_COOKIE}_{account}"
        self._who: dict[str, str] = {} if account is None else {"account": account}
        self.api = api
        self.store = store
        self.repo = repo
        self.profiles = profiles
        self.prefix = namespace + "oauth:state:"
        self.clock = clock  # wall clock: signed timestamps are compared across processes
        self.secure = settings.public_base_url.startswith("https://")
        secret = settings.session_secret.get_secret_value()

        def now() -> float:  # self.clock when asked: tests replace it to expire cookies
            return self.clock()

        self.sessions = serializer(secret, "session", clock=now)
        self.log = get_logger("wxhook.oauth")
        # Shared by every account's OAuth when given: a flood spread over many accounts'
        # callbacks writes no more lines than one at a single account's.
        self.refusals = refusals or LimitedLog(self.log, metrics=metrics)
        self.logins = LoginCookie(serializer(secret, "state", clock=now), ttl=STATE_TTL)
        # Each fresh signed state costs an exchange with the app secret (README: Security).
        self.limit = limit or WindowLimit(per_client=settings.oauth_limit_per_client,
                                          total=settings.oauth_limit_total)

    def routes(self) -> list[Route]:
        """/oauth/login, /oauth/callback and /me (of the one account of WECHAT_*)."""
        return [Route(self.login_path, self.login, methods=["GET", "HEAD"]),
                Route(self.callback_path, self.callback, methods=["GET"]),  # spends the code
                Route(self.me_path, self.me, methods=["GET", "HEAD"])]

    # -- cookies -------------------------------------------------------------------------

    def _cookie(self, resp: Response, name: str, value: str, *, max_age: int, path: str) -> None:
        resp.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="lax", secure=self.secure)

    def session_openid(self, request: Request) -> str | None:
        """The openid of the signed-in follower, or None."""
        data = verified(self.sessions, request.cookies.get(self.session_cookie),
                        max_age=SESSION_TTL)
        openid = (data or {}).get("o")
        return openid if isinstance(openid, str) and openid else None

    def _next(self, raw: str | None) -> str:
        return safe_next(raw, self.me_path)

    def _problem(self, kind: str, *, retry_next: str | None = None,
                 retry_scope: str | None = None) -> Response:
        return problem_page(kind, retry_next=retry_next or self.me_path,
                            retry_scope=retry_scope, login=self.login_path)

    # -- routes ------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """Redirect to WeChat's authorize page with a fresh state bound to this browser."""
        raw_next = request.query_params.get("next")
        if raw_next is not None and next_size(raw_next) > MAX_NEXT_BYTES:
            return self._problem("long")  # refused, not cut: a cut path is another page
        next_path = self._next(raw_next)
        scope = request.query_params.get("scope") or SCOPES[0]
        if scope not in SCOPES:
            return self._problem("scope", retry_next=next_path)
        state = "".join(secrets.choice(_ALNUM) for _ in range(32))  # ~190 bits
        # Parameters in WeChat's documented order; connect_redirect=1 asks WeChat not to
        # call the redirect twice, and the fragment is required by the authorize page.
        params = urlencode([
            ("appid", self.settings.app_id),
            ("redirect_uri", self.settings.public_base_url + self.callback_path),
            ("response_type", "code"), ("scope", scope), ("state", state),
            ("connect_redirect", "1")], quote_via=quote)
        url = f"{self.settings.oauth_base}/connect/oauth2/authorize?{params}#wechat_redirect"
        resp = RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
        # One cookie for this browser's logins in progress, whatever their number.
        login = Login(state, next_path, scope, int(self.clock()))
        self._cookie(resp, self.state_cookie,
                     self.logins.add(request.cookies.get(self.state_cookie), login),
                     max_age=STATE_TTL, path=self.state_path)
        return resp

    async def callback(self, request: Request) -> Response:
        """Check the state, exchange the code, keep the profile, sign the follower in."""
        try:
            return await self._callback(request)
        except Exception:  # noqa: BLE001 - a friendly page, never a 5xx, whatever broke
            # Logged with its traceback, bounded: a store outage would otherwise write a
            # traceback per callback.
            self.refusals.error("callback_failed", "oauth_callback_failed", exc_info=True,
                                **self._who)
            return self._problem("error")

    async def _callback(self, request: Request) -> Response:
        q = request.query_params
        state, code = q.get("state", ""), q.get("code", "")
        if not _STATE_RE.fullmatch(state):
            return self._problem("invalid")
        logins = self.logins.logins(request.cookies.get(self.state_cookie))
        mine = next((x for x in logins or [] if x.state == state), None)
        started = mine if mine and 0 <= self.clock() - mine.began <= STATE_TTL else None
        rest = [x for x in logins or [] if x.state != state]
        next_path = self._next(started.next if started else None)
        if not code:
            # The follower tapped "refuse" (or the link was cut short).
            return self._problem("cancelled", retry_next=next_path)
        client = request.client.host if request.client else ""
        if started is not None and not self.limit.allow(client):
            # Counted before the Store is asked: a callback with a signed state may spend a
            # code exchange (WeChat's repeated redirect counts too; it is no more than two).
            self.refusals.warning("limit", "oauth_rate_limited", client=client, **self._who)
            resp = self._problem("busy", retry_next=next_path)
            resp.headers["retry-after"] = str(int(self.limit.window))
            return resp
        key = own_slot(self.prefix, state)  # a forged state picks no slot of its own
        record = {"status": "pending", "code": _digest(code)}
        if started is not None and await self.store.set(key, json.dumps(record).encode(),
                                                        ttl=STATE_TTL, nx=True):
            return await self._complete(key, record, started, code, rest)
        if await self.store.get(key) is not None:
            return await self._repeat(request, key, state, code, started, rest)
        if mine is not None or (logins is None and request.cookies.get(self.state_cookie)):
            # Signed but too old (or tampered with): the ten minutes are over.
            return self._problem("expired")
        # No cookie for this state: forged, or started in another browser (login CSRF).
        self.refusals.warning("no_matching_cookie", "oauth_state_rejected",
                              reason="no_matching_cookie", **self._who)
        return self._problem("forged")

    async def _complete(self, key: str, record: dict[str, str], started: Login,
                        code: str, rest: list[Login]) -> Response:
        next_path = self._next(started.next)
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
        self.log.info("oauth_login", openid=mask_openid(openid), scope=scope, **self._who)
        return self._signed_in(openid, started.state, next_path, rest)

    async def _repeat(self, request: Request, key: str, state: str, code: str,
                      started: Login | None, rest: list[Login]) -> Response:
        # WeChat sometimes calls the redirect twice: the second call finds the state used.
        # The browser that completed this exact state and code just goes on to `next`.
        session = verified(self.sessions, request.cookies.get(self.session_cookie),
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
                                   self._next(str(record.get("next"))), rest)
        self.refusals.warning("reused", "oauth_state_rejected", reason="reused", **self._who)
        return self._problem("reused")

    def _signed_in(self, openid: str, state: str, next_path: str,
                   rest: list[Login]) -> Response:
        # 303: the browser GETs `next`, whatever the method of this request.
        resp = RedirectResponse(next_path, status_code=303, headers={"cache-control": "no-store"})
        value = self.sessions.dumps({"o": openid, "st": state})
        self._cookie(resp, self.session_cookie, value, max_age=SESSION_TTL, path="/")
        if rest:  # the other logins still in progress in this browser stay
            self._cookie(resp, self.state_cookie, self.logins.value(rest), max_age=STATE_TTL,
                         path=self.state_path)
        else:
            resp.delete_cookie(self.state_cookie, path=self.state_path, httponly=True,
                               samesite="lax", secure=self.secure)
        return resp

    def _failure(self, exc: WeChatAPIError, next_path: str) -> Response:
        # A code anyone can make up (40029) after a login anyone can start: bounded.
        self.refusals.warning("failed", "oauth_failed", errcode=exc.errcode, api=exc.api,
                              **self._who)
        if exc.errcode in _CODE_ERRORS:
            return self._problem("code", retry_next=next_path)
        if exc.errcode == 48001:
            return self._problem("permission", retry_next=next_path, retry_scope=SCOPES[0])
        if isinstance(exc, UpstreamUnavailable) or exc.errcode == -1:
            return self._problem("upstream", retry_next=next_path)
        return self._problem("failed", retry_next=next_path)

    async def me(self, request: Request) -> Response:
        """Hello, <nickname>, for a signed-in follower; a login link otherwise."""
        openid = self.session_openid(request)
        profile = await self.repo.get(openid) if openid else None
        return me_page(profile, logged_in=openid is not None, login=self.login_path,
                       me=self.me_path)

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
