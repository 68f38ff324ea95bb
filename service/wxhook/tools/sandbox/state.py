"""The sandbox's memory: accounts, tokens, OAuth codes, faults, what was sent."""

from __future__ import annotations

import base64
import collections
import copy
import hashlib
import json
import re
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from wxhook.tools.sandbox.samples import AUTOREPLY_SAMPLE, SELFMENU_CONSOLE_SAMPLE

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
    appid: str | None = None  # only calls of this account (by appid, or by its token)


@dataclass
class _Token:
    expires_at: float
    appid: str = ""  # whose global token
    dies_at: float | None = None  # set when a newer token supersedes this one
    openid: str = ""  # web (sns) tokens only
    scope: str = ""


@dataclass
class _Code:
    openid: str
    scope: str
    issued_at: float
    used: bool = False
    appid: str | None = None  # the account it was issued for: another's exchange is 40029


class SandboxState:
    """Everything the sandbox remembers; tests read and steer it directly."""

    def __init__(self, *, appid: str, secret: str, token_ttl: int = 7200, grace: float = 300.0,
                 empty_nicknames: bool = False, latency: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 callback_ips: list[str] | None = None) -> None:
        self.appid = appid
        self.secret = secret
        # Every account the sandbox stands in for: appid -> secret (add_account adds one).
        self.accounts: dict[str, str] = {appid: secret}
        self.token_calls: collections.Counter[str] = collections.Counter()  # by appid
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
        # The console's configuration (WeChat's documented samples) and the API menu.
        self.autoreply: dict[str, Any] = copy.deepcopy(AUTOREPLY_SAMPLE)
        self.selfmenu: dict[str, Any] = copy.deepcopy(SELFMENU_CONSOLE_SAMPLE)
        self.menus: dict[str, dict[str, Any]] = {}  # appid -> the menu made through the API
        self._reset_tokens()

    def _reset_tokens(self) -> None:
        self._tokens: dict[str, _Token] = {}  # global tokens, both pools
        self._basic: dict[str, str] = {}  # appid -> newest /cgi-bin/token token
        self._stable: dict[str, str] = {}  # appid -> current stable token
        self._web: dict[str, _Token] = {}
        self._refresh: dict[str, _Code] = {}
        self._codes: dict[str, _Code] = {}

    @property
    def token_requests(self) -> int:
        """Requests to /cgi-bin/token and /cgi-bin/stable_token."""
        return self.calls["/cgi-bin/token"] + self.calls["/cgi-bin/stable_token"]

    def add_account(self, appid: str, secret: str) -> None:
        """Stand in for one more account: its appid/secret pair gets tokens of its own."""
        self.accounts[appid] = secret

    @property
    def menu(self) -> dict[str, Any] | None:
        """The API-made menu of the sandbox's own account (each account has its own)."""
        return self.menus.get(self.appid)

    def add_fault(self, fault: Fault) -> None:
        """Add a fault rule; earlier rules win."""
        self.faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self.faults.clear()

    def invalidate_tokens(self) -> None:
        """Kill every global access token issued so far (next use answers 40001)."""
        self._tokens.clear()
        self._basic.clear()
        self._stable.clear()

    def mint_oauth_code(self, openid: str, scope: str = "snsapi_userinfo",
                        appid: str | None = None) -> str:
        """Issue an OAuth code as if `openid` had just authorised in the browser."""
        if not _OPENID.fullmatch(openid):
            raise ValueError(f"not a well-formed openid: {openid!r}")
        if scope not in ("snsapi_base", "snsapi_userinfo"):
            raise ValueError(f"unknown scope: {scope!r}")
        code = secrets.token_hex(16)
        self._codes[code] = _Code(openid, scope, self.clock(), appid=appid)
        return code

    def reset(self) -> None:
        """Forget counters, faults, tokens, codes and sent messages; keep the configuration."""
        self.calls.clear()
        self.token_calls.clear()
        self.sent.clear()
        self.faults.clear()
        self._reset_tokens()

    # -- used by the routes below ----------------------------------------------------

    def _take_fault(self, path: str, appid: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.appid is not None and fault.appid != appid:
                continue
            if fault.path in (path, "*") and (fault.times is None or fault.times > 0):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def _owner(self, token: str | None) -> str | None:
        """The appid a global token was issued to (None: no such token)."""
        found = self._tokens.get(token) if token else None
        return found.appid if found is not None else None

    def _issue_basic(self, appid: str) -> str:
        now = self.clock()
        # Killed tokens answer 40001 exactly like unknown ones, so forgetting them is safe.
        dead = [k for k, t in self._tokens.items() if t.dies_at is not None and t.dies_at <= now]
        for key in dead:
            del self._tokens[key]
        previous = self._basic.get(appid)
        if previous is not None and previous in self._tokens:
            # WeChat keeps the previous token alive for about 5 minutes, then kills it.
            old = self._tokens[previous]
            old.dies_at = min(old.expires_at, now + self.grace)
        token = self._basic[appid] = _new_token()
        self._tokens[token] = _Token(now + self.token_ttl, appid=appid)
        return token

    def _issue_stable(self, appid: str, force: bool) -> tuple[str, int]:
        now = self.clock()
        old = self._stable.get(appid)
        current = self._tokens.get(old) if old is not None else None
        if old is not None and current is not None:
            left = current.expires_at - now
            if force:
                del self._tokens[old]  # force_refresh kills the previous stable token at once
            elif left > STABLE_RENEW:
                return old, int(left)
        # Renewing in the last 5 minutes leaves the old stable token valid until it expires.
        token = self._stable[appid] = _new_token()
        self._tokens[token] = _Token(now + self.token_ttl, appid=appid)
        return token, self.token_ttl

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


async def _authorized_body(request: Request, st: SandboxState) -> dict[str, Any] | JSONResponse:
    """A token-bearing call's JSON object; WeChat's error answer for a bad token or body."""
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    body = await _json_body(request)
    return _err(47001) if body is None else body


def _client_error(st: SandboxState, got: Any, want: str, appid: Any, secret: Any, *,
                  whitelist: bool = True) -> JSONResponse | None:
    """The error WeChat gives for a bad grant_type, appid, secret or caller IP, if any."""
    if got != want:
        return _err(40002)
    if not isinstance(appid, str) or appid not in st.accounts:
        return _err(40013)
    if secret != st.accounts[appid]:
        return _err(40125)
    if whitelist and not st.ip_whitelisted:
        return _err(40164, "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist")
    return None


