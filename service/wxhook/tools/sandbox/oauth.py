"""The sandbox's OAuth2 web authorization: authorize page, web tokens, sns/userinfo."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from wxhook.tools.sandbox.state import (
    _OPENID,
    CODE_TTL,
    DEMO_OPENID,
    REFRESH_TTL,
    WEB_TOKEN_TTL,
    SandboxState,
    _client_error,
    _Code,
    _err,
    _new_token,
    _Token,
)


async def _authorize(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if q.get("appid") not in st.accounts:
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
    query += [("code", st.mint_oauth_code(openid, scope, q["appid"])),
              ("state", q.get("state", ""))]
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
    if grant is None or grant.appid not in (None, q.get("appid")):  # a code is one account's
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
    if q.get("appid") not in st.accounts:
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

