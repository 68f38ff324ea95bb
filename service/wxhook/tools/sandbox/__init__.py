"""A local stand-in for the WeChat API, faithful where the server's behaviour depends on it.

state.py holds what it remembers; wechat.py, oauth.py and console.py answer like WeChat's
API; control.py is the test-facing /_sandbox/ API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from wxhook.tools.sandbox import console, oauth, wechat
from wxhook.tools.sandbox.control import _control_routes
from wxhook.tools.sandbox.state import (
    DEMO_OPENID,
    DEMO_PROFILE,
    Fault,
    SandboxState,
    _err,
    _json_body,
)

__all__ = ["DEMO_OPENID", "DEMO_PROFILE", "Fault", "SandboxState", "create_sandbox"]

_API: list[tuple[str, str, Callable[[Request, SandboxState], Awaitable[Response]]]] = [
    ("GET", "/cgi-bin/token", wechat._token),
    ("POST", "/cgi-bin/stable_token", wechat._stable_token),
    ("GET", "/cgi-bin/user/info", wechat._user_info),
    ("POST", "/cgi-bin/user/info/batchget", wechat._batchget),
    ("POST", "/cgi-bin/message/custom/send", wechat._custom_send),
    ("GET", "/cgi-bin/getcallbackip", wechat._callback_ip),
    ("GET", "/connect/oauth2/authorize", oauth._authorize),
    ("GET", "/sns/oauth2/access_token", oauth._sns_access_token),
    ("GET", "/sns/oauth2/refresh_token", oauth._sns_refresh),
    ("GET", "/sns/userinfo", oauth._sns_userinfo),
    ("GET", "/sns/auth", oauth._sns_auth),
    ("GET", "/cgi-bin/get_current_autoreply_info", console._autoreply),
    ("GET", "/cgi-bin/get_current_selfmenu_info", console._selfmenu),
    ("POST", "/cgi-bin/menu/create", console._menu_create),
    ("GET", "/cgi-bin/menu/get", console._menu_get),
    ("GET", "/cgi-bin/menu/delete", console._menu_delete),
]


def _api_route(st: SandboxState, method: str, path: str,
               handler: Callable[[Request, SandboxState], Awaitable[Response]],
               sleep: Callable[[float], Awaitable[None]]) -> Route:
    async def endpoint(request: Request) -> Response:
        st.calls[path] += 1
        appid = await _caller(request, st)
        if path in _TOKEN_PATHS:
            st.token_calls[str(appid)] += 1
        fault = st._take_fault(path, appid)
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


_TOKEN_PATHS = frozenset({"/cgi-bin/token", "/cgi-bin/stable_token"})


async def _caller(request: Request, st: SandboxState) -> str | None:
    """Which account is calling: the appid it sends, or the one its access token names."""
    q = request.query_params
    if "appid" in q:
        return q["appid"]
    if "access_token" in q:
        return st._owner(q["access_token"])
    if request.method == "POST":
        body = await _json_body(request)  # starlette keeps the body for the handler
        if body is not None and isinstance(body.get("appid"), str):
            return str(body["appid"])
    return None


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
  POST   /_sandbox/console     {{"autoreply","selfmenu","menu"}}: the console's configuration
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
