"""A local stand-in for the WeChat API, faithful where the server's behaviour depends on it."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

DEMO_OPENID = "oSandboxDemoFollower00000001"
DEMO_PROFILE = {"nickname": "刺猬宝宝", "headimgurl": "https://thirdwx.qlogo.cn/mmopen/demo/132"}
# 127.0.0.1 is listed so a server that checks push origins accepts `wxhook simulate` locally.
DEFAULT_CALLBACK_IPS = ["101.226.62.77", "101.226.103.0/25", "180.163.15.0/24", "127.0.0.1"]
CODE_TTL = 300.0  # OAuth codes die after 5 minutes (42003)
WEB_TOKEN_TTL = 7200
REFRESH_TTL = 30 * 86400.0  # refresh_token lives 30 days (42002)
STABLE_RENEW = 300.0  # stable_token renews when 5 minutes or less are left
BATCH_LIMIT = 100

_OPENID = re.compile(r"o[A-Za-z0-9_-]{27}")
_ERRMSG = {
    -1: "system error", 40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type", 40003: "invalid openid", 40008: "invalid message type",
    40013: "invalid appid", 40029: "invalid code", 40030: "invalid refresh_token",
    40032: "invalid openid list size, at most 100", 40125: "invalid appsecret",
    40163: "code been used", 41001: "access_token missing", 42001: "access_token expired",
    42002: "refresh_token expired", 42003: "code expired", 44004: "empty content",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit", 47001: "data format error", 48001: "api unauthorized",
}
_MSGTYPES = {"text", "image", "voice", "video", "music", "news", "mpnews", "mpnewsarticle",
             "msgmenu", "wxcard", "miniprogrampage"}


@dataclass
class Fault:
    """One injected fault rule: delay, errcode or HTTP status for matching API paths."""

    path: str
    latency: float = 0.0
    errcode: int | None = None
    http_status: int | None = None
    times: int | None = None


@dataclass
class _Token:
    expires_at: float
    dies_at: float | None = None  # set when a newer token supersedes this one
    openid: str = ""  # web (sns) tokens only
    scope: str = ""


@dataclass
class _Code:
    openid: str
    scope: str
    issued_at: float
    used: bool = False


class SandboxState:
    """Everything the sandbox remembers; tests read and steer it directly."""

    def __init__(self, *, appid: str, secret: str, token_ttl: int = 7200, grace: float = 300.0,
                 empty_nicknames: bool = False, latency: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 callback_ips: list[str] | None = None) -> None:
        self.appid = appid
        self.secret = secret
        self.token_ttl = token_ttl
        self.grace = grace
        self.clock = clock
        self.empty_nicknames = empty_nicknames
        self.latency = latency
        self.ip_whitelisted = True
        self.callback_ips = list(DEFAULT_CALLBACK_IPS if callback_ips is None else callback_ips)
        self.users: dict[str, dict[str, Any]] = {DEMO_OPENID: dict(DEMO_PROFILE)}
        self.calls: collections.Counter[str] = collections.Counter()
        self.sent: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self._reset_tokens()

    def _reset_tokens(self) -> None:
        self._tokens: dict[str, _Token] = {}  # global tokens, both pools
        self._basic: str | None = None  # newest /cgi-bin/token token
        self._stable: str | None = None  # current stable token
        self._web: dict[str, _Token] = {}
        self._refresh: dict[str, _Code] = {}
        self._codes: dict[str, _Code] = {}

    @property
    def token_requests(self) -> int:
        """Requests to /cgi-bin/token and /cgi-bin/stable_token."""
        return self.calls["/cgi-bin/token"] + self.calls["/cgi-bin/stable_token"]

    def add_fault(self, fault: Fault) -> None:
        """Add a fault rule; earlier rules win."""
        self.faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self.faults.clear()

    def invalidate_tokens(self) -> None:
        """Kill every global access token issued so far (next use answers 40001)."""
        self._tokens.clear()
        self._basic = self._stable = None

    def mint_oauth_code(self, openid: str, scope: str = "snsapi_userinfo") -> str:
        """Issue an OAuth code as if `openid` had just authorised in the browser."""
        if not _OPENID.fullmatch(openid):
            raise ValueError(f"not a well-formed openid: {openid!r}")
        if scope not in ("snsapi_base", "snsapi_userinfo"):
            raise ValueError(f"unknown scope: {scope!r}")
        code = secrets.token_hex(16)
        self._codes[code] = _Code(openid, scope, self.clock())
        return code

    def reset(self) -> None:
        """Forget counters, faults, tokens, codes and sent messages; keep the configuration."""
        self.calls.clear()
        self.sent.clear()
        self.faults.clear()
        self._reset_tokens()

    # -- used by the routes below ----------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if (fault.path == path or fault.path == "*") and (fault.times is None or fault.times > 0):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def _issue_basic(self) -> str:
        now = self.clock()
        # Killed tokens answer 40001 exactly like unknown ones, so forgetting them is safe.
        for key in [k for k, t in self._tokens.items() if t.dies_at is not None and t.dies_at <= now]:
            del self._tokens[key]
        if self._basic is not None and self._basic in self._tokens:
            # WeChat keeps the previous token alive for about 5 minutes, then kills it.
            old = self._tokens[self._basic]
            old.dies_at = min(old.expires_at, now + self.grace)
        self._basic = _new_token()
        self._tokens[self._basic] = _Token(now + self.token_ttl)
        return self._basic

    def _issue_stable(self, force: bool) -> tuple[str, int]:
        now = self.clock()
        old = self._stable
        current = self._tokens.get(old) if old is not None else None
        if old is not None and current is not None:
            left = current.expires_at - now
            if force:
                del self._tokens[old]  # force_refresh kills the previous stable token at once
            elif left > STABLE_RENEW:
                return old, int(left)
        # Renewing in the last 5 minutes leaves the old stable token valid until it expires.
        self._stable = _new_token()
        self._tokens[self._stable] = _Token(now + self.token_ttl)
        return self._stable, self.token_ttl

    def _check_token(self, token: str | None, pool: dict[str, _Token] | None = None) -> int:
        if not token:
            return 41001
        found = (self._tokens if pool is None else pool).get(token)
        now = self.clock()
        if found is None or (found.dies_at is not None and now >= found.dies_at):
            return 40001
        return 42001 if now >= found.expires_at else 0

    def _profile(self, openid: str, *, for_sns: bool = False) -> dict[str, Any]:
        digest = hashlib.sha1(f"{self.appid}:{openid}".encode()).digest()
        info: dict[str, Any] = {
            "subscribe": 1, "openid": openid, "nickname": f"Follower-{openid[-6:]}", "sex": 0,
            "language": "zh_CN", "city": "", "province": "", "country": "",
            "headimgurl": f"https://thirdwx.qlogo.cn/mmopen/sandbox/{openid[-6:]}/132",
            "subscribe_time": 1600000000 + zlib.crc32(openid.encode()) % 100_000_000,
            "unionid": "o" + base64.urlsafe_b64encode(digest).decode()[:27],
            "remark": "", "groupid": 0, "tagid_list": [],
            "subscribe_scene": "ADD_SCENE_QR_CODE", "qr_scene": 0, "qr_scene_str": "",
        }
        info.update(self.users.get(openid, {}))
        if for_sns:
            keys = ("openid", "nickname", "sex", "province", "city", "country", "headimgurl",
                    "unionid")
            return {**{k: info[k] for k in keys}, "privilege": []}
        if info["subscribe"] == 0:
            return {"subscribe": 0, "openid": openid}
        if self.empty_nicknames:
            # Since 2021-12-27 user/info answers nickname and headimgurl as "".
            info["nickname"] = info["headimgurl"] = ""
        return info


def _new_token() -> str:
    # Real tokens are opaque 130-170 character strings; callers must not parse them.
    return secrets.token_urlsafe(96)


def _err(code: int, errmsg: str | None = None) -> JSONResponse:
    rid = f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
    return JSONResponse({"errcode": code,
                         "errmsg": f"{errmsg or _ERRMSG.get(code, 'error')} rid: {rid}"})


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _client_error(st: SandboxState, got: Any, want: str, appid: Any, secret: Any, *,
                  whitelist: bool = True) -> JSONResponse | None:
    """The error WeChat gives for a bad grant_type, appid, secret or caller IP, if any."""
    if got != want:
        return _err(40002)
    if appid != st.appid:
        return _err(40013)
    if secret != st.secret:
        return _err(40125)
    if whitelist and not st.ip_whitelisted:
        return _err(40164, "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist")
    return None


# -- API handlers: each takes (request, state) and answers like WeChat ------------------

async def _token(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if error := _client_error(st, q.get("grant_type"), "client_credential", q.get("appid"),
                              q.get("secret")):
        return error
    return JSONResponse({"access_token": st._issue_basic(), "expires_in": st.token_ttl})


async def _stable_token(request: Request, st: SandboxState) -> Response:
    body = await _json_body(request)
    if body is None:
        return _err(47001)
    if error := _client_error(st, body.get("grant_type"), "client_credential",
                              body.get("appid"), body.get("secret")):
        return error
    token, expires_in = st._issue_stable(body.get("force_refresh") is True)
    return JSONResponse({"access_token": token, "expires_in": expires_in})


async def _user_info(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if code := st._check_token(q.get("access_token")):
        return _err(code)
    openid = q.get("openid", "")
    if not _OPENID.fullmatch(openid):
        return _err(40003)
    return JSONResponse(st._profile(openid))


async def _batchget(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    body = await _json_body(request)
    items = body.get("user_list") if body is not None else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return _err(47001)
    if not 0 < len(items) <= BATCH_LIMIT:
        return _err(40032)
    openids = [str(i.get("openid", "")) for i in items]
    if not all(_OPENID.fullmatch(o) for o in openids):
        return _err(40003)
    return JSONResponse({"user_info_list": [st._profile(o) for o in openids]})


async def _custom_send(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    body = await _json_body(request)
    if body is None:
        return _err(47001)
    if not _OPENID.fullmatch(str(body.get("touser", ""))):
        return _err(40003)
    msgtype = body.get("msgtype")
    if msgtype not in _MSGTYPES:
        return _err(40008)
    if msgtype == "text" and not (body.get("text") or {}).get("content"):
        return _err(44004)
    st.sent.append(body)
    return JSONResponse({"errcode": 0, "errmsg": "ok"})


async def _callback_ip(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    return JSONResponse({"ip_list": list(st.callback_ips)})


async def _authorize(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if q.get("appid") != st.appid:
        return PlainTextResponse("appid 参数错误 (wrong appid)", status_code=400)
    scope = q.get("scope", "")
    if scope not in ("snsapi_base", "snsapi_userinfo"):
        return PlainTextResponse("scope 参数错误或没有 scope 权限 (bad scope)", status_code=400)
    redirect_uri, openid = q.get("redirect_uri", ""), q.get("openid", DEMO_OPENID)
    if q.get("response_type") != "code" or not redirect_uri.startswith(("http://", "https://")):
        return PlainTextResponse("redirect_uri 或 response_type 参数错误", status_code=400)
    if not _OPENID.fullmatch(openid):
        return PlainTextResponse("openid 参数错误 (sandbox)", status_code=400)
    # The sandbox skips the consent screen: the follower authorises at once.
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [("code", st.mint_oauth_code(openid, scope)), ("state", q.get("state", ""))]
    return RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), status_code=302)


def _web_token_body(st: SandboxState, grant: _Code, refresh: str | None = None) -> dict[str, Any]:
    token = _new_token()
    st._web[token] = _Token(st.clock() + WEB_TOKEN_TTL, openid=grant.openid, scope=grant.scope)
    if refresh is None:
        refresh = _new_token()
        st._refresh[refresh] = grant
    return {"access_token": token, "expires_in": WEB_TOKEN_TTL, "refresh_token": refresh,
            "openid": grant.openid, "scope": grant.scope,
            "unionid": st._profile(grant.openid, for_sns=True)["unionid"]}


async def _sns_access_token(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if error := _client_error(st, q.get("grant_type"), "authorization_code", q.get("appid"),
                              q.get("secret"), whitelist=False):
        return error
    grant = st._codes.get(q.get("code", ""))
    if grant is None:
        return _err(40029)
    if grant.used:
        return _err(40163)
    if st.clock() - grant.issued_at > CODE_TTL:
        return _err(42003)
    grant.used = True
    # A fresh grant record dates the refresh_token from now, not from the code.
    return JSONResponse(_web_token_body(st, _Code(grant.openid, grant.scope, st.clock())))


async def _sns_refresh(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if q.get("grant_type") != "refresh_token":
        return _err(40002)
    if q.get("appid") != st.appid:
        return _err(40013)
    refresh = q.get("refresh_token", "")
    grant = st._refresh.get(refresh)
    if grant is None:
        return _err(40030)
    if st.clock() - grant.issued_at > REFRESH_TTL:
        return _err(42002)
    # WeChat answers with the same refresh_token; its 30 days still count from the login.
    return JSONResponse(_web_token_body(st, grant, refresh))


def _web_token_error(st: SandboxState, q: QueryParams) -> int:
    token = q.get("access_token", "")
    if code := st._check_token(token, st._web):
        return code
    return 0 if st._web[token].openid == q.get("openid") else 40001


async def _sns_userinfo(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if code := _web_token_error(st, q):
        return _err(code)
    if st._web[q["access_token"]].scope != "snsapi_userinfo":
        return _err(48001)
    # sns/userinfo was never emptied: it still returns the real nickname and avatar.
    return JSONResponse(st._profile(q["openid"], for_sns=True))


async def _sns_auth(request: Request, st: SandboxState) -> Response:
    if code := _web_token_error(st, request.query_params):
        return _err(code)
    return JSONResponse({"errcode": 0, "errmsg": "ok"})


_API: list[tuple[str, str, Callable[[Request, SandboxState], Awaitable[Response]]]] = [
    ("GET", "/cgi-bin/token", _token),
    ("POST", "/cgi-bin/stable_token", _stable_token),
    ("GET", "/cgi-bin/user/info", _user_info),
    ("POST", "/cgi-bin/user/info/batchget", _batchget),
    ("POST", "/cgi-bin/message/custom/send", _custom_send),
    ("GET", "/cgi-bin/getcallbackip", _callback_ip),
    ("GET", "/connect/oauth2/authorize", _authorize),
    ("GET", "/sns/oauth2/access_token", _sns_access_token),
    ("GET", "/sns/oauth2/refresh_token", _sns_refresh),
    ("GET", "/sns/userinfo", _sns_userinfo),
    ("GET", "/sns/auth", _sns_auth),
]


def _api_route(st: SandboxState, method: str, path: str,
               handler: Callable[[Request, SandboxState], Awaitable[Response]],
               sleep: Callable[[float], Awaitable[None]]) -> Route:
    async def endpoint(request: Request) -> Response:
        st.calls[path] += 1
        fault = st._take_fault(path)
        delay = st.latency + (fault.latency if fault is not None else 0.0)
        if delay > 0:
            await sleep(delay)
        if fault is not None and fault.errcode is not None:
            return _err(fault.errcode)
        if fault is not None and fault.http_status is not None:
            return PlainTextResponse(f"sandbox fault: HTTP {fault.http_status}",
                                     status_code=fault.http_status)
        return await handler(request, st)

    return Route(path, endpoint, methods=[method])


def _fault_from(body: dict[str, Any] | None) -> Fault:
    names = {f.name for f in fields(Fault)}
    if body is None or not isinstance(body.get("path"), str) or set(body) - names:
        raise ValueError(f"body must be an object with fields {sorted(names)} (path required)")
    for key in ("errcode", "http_status", "times"):
        if body.get(key) is not None and type(body[key]) is not int:
            raise ValueError(f"{key} must be an integer or null")
    if not isinstance(body.get("latency", 0.0), int | float) or body.get("latency", 0.0) < 0:
        raise ValueError("latency must be a number of seconds >= 0")
    return Fault(**body)


def _control_routes(st: SandboxState) -> list[Route]:
    def done(action: Callable[[], None]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            action()
            return JSONResponse({"ok": True})
        return endpoint

    async def add_fault(request: Request) -> Response:
        try:
            fault = _fault_from(await _json_body(request))
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        st.add_fault(fault)
        return JSONResponse({"ok": True, "fault": asdict(fault)})

    async def stats(request: Request) -> Response:
        return JSONResponse({"calls": dict(st.calls), "token_requests": st.token_requests,
                             "sent": st.sent})

    async def config(request: Request) -> Response:
        body = await _json_body(request)
        allowed = {"empty_nicknames", "latency", "ip_whitelisted", "users"}
        users = (body or {}).get("users") or {}
        if (body is None or set(body) - allowed or not isinstance(users, dict)
                or not all(isinstance(u, dict) for u in users.values())
                or not isinstance(body.get("latency", 0.0), int | float)):
            return JSONResponse({"error": f"body may hold only {sorted(allowed)}; users is "
                                 "{openid: {field: value}}, latency a number"}, status_code=400)
        for key in ("empty_nicknames", "ip_whitelisted"):
            if key in body:
                setattr(st, key, bool(body[key]))
        st.latency = float(body.get("latency", st.latency))
        st.users.update(users)  # merged, so a test can add one follower without listing all
        return JSONResponse({"ok": True, "empty_nicknames": st.empty_nicknames,
                             "latency": st.latency, "ip_whitelisted": st.ip_whitelisted})

    async def oauth_code(request: Request) -> Response:
        body = await _json_body(request) or {}
        try:
            code = st.mint_oauth_code(str(body.get("openid", DEMO_OPENID)),
                                      str(body.get("scope", "snsapi_userinfo")))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"code": code})

    return [
        Route("/_sandbox/faults", add_fault, methods=["POST"]),
        Route("/_sandbox/faults", done(st.clear_faults), methods=["DELETE"]),
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/invalidate", done(st.invalidate_tokens), methods=["POST"]),
        Route("/_sandbox/reset", done(st.reset), methods=["POST"]),
        Route("/_sandbox/config", config, methods=["POST"]),
        Route("/_sandbox/oauth/code", oauth_code, methods=["POST"]),
    ]


_INDEX = """wxhook sandbox WeChat API: a local stand-in for api.weixin.qq.com (not WeChat).

API: {api}

Control (JSON, not counted in calls):
  POST   /_sandbox/faults      {{"path","latency","errcode","http_status","times"}}
  DELETE /_sandbox/faults      clear faults
  GET    /_sandbox/stats       calls, token_requests, sent
  POST   /_sandbox/invalidate  kill every access token
  POST   /_sandbox/reset       counters, faults, tokens, sent
  POST   /_sandbox/config      {{"empty_nicknames","latency","ip_whitelisted","users"}}
  POST   /_sandbox/oauth/code  {{"openid","scope"}} -> {{"code"}}
"""


def create_sandbox(*, appid: str, secret: str, token_ttl: int = 7200, grace: float = 300.0,
                   empty_nicknames: bool = False, latency: float = 0.0,
                   clock: Callable[[], float] = time.time,
                   callback_ips: list[str] | None = None,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Starlette:
    """Build the sandbox app; `app.state.sandbox` is its SandboxState; `sleep` waits latency."""
    st = SandboxState(appid=appid, secret=secret, token_ttl=token_ttl, grace=grace,
                      empty_nicknames=empty_nicknames, latency=latency, clock=clock,
                      callback_ips=callback_ips)
    index_text = _INDEX.format(api=", ".join(path for _, path, _ in _API))

    async def index(request: Request) -> Response:
        return PlainTextResponse(index_text)

    routes = [Route("/", index, methods=["GET"])]
    routes += [_api_route(st, method, path, handler, sleep) for method, path, handler in _API]
    routes += _control_routes(st)
    app = Starlette(routes=routes)
    app.state.sandbox = st
    return app
