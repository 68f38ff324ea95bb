"""The sandbox's cgi-bin API: tokens, user info, customer-service messages, callback IPs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from wxhook.tools.sandbox.state import (
    _MSGTYPES,
    _OPENID,
    BATCH_LIMIT,
    SandboxState,
    _authorized_body,
    _client_error,
    _err,
    _json_body,
)


async def _token(request: Request, st: SandboxState) -> Response:
    q = request.query_params
    if error := _client_error(st, q.get("grant_type"), "client_credential", q.get("appid"),
                              q.get("secret")):
        return error
    appid = str(q.get("appid"))
    return JSONResponse({"access_token": st._issue_basic(appid), "expires_in": st.token_ttl})


async def _stable_token(request: Request, st: SandboxState) -> Response:
    body = await _json_body(request)
    if body is None:
        return _err(47001)
    if error := _client_error(st, body.get("grant_type"), "client_credential",
                              body.get("appid"), body.get("secret")):
        return error
    token, expires_in = st._issue_stable(str(body.get("appid")), body.get("force_refresh") is True)
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
    body = await _authorized_body(request, st)
    if isinstance(body, Response):
        return body
    items = body.get("user_list")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return _err(47001)
    if not 0 < len(items) <= BATCH_LIMIT:
        return _err(40032)
    openids = [str(i.get("openid", "")) for i in items]
    if not all(_OPENID.fullmatch(o) for o in openids):
        return _err(40003)
    return JSONResponse({"user_info_list": [st._profile(o) for o in openids]})


async def _custom_send(request: Request, st: SandboxState) -> Response:
    body = await _authorized_body(request, st)
    if isinstance(body, Response):
        return body
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

