"""The sandbox's console configuration and custom menu: what `wxhook rules import` reads and
`wxhook menu push | show | delete` changes, with WeChat's menu limits and errcodes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from wxhook.menu import MENU_ERRORS, menu_problems
from wxhook.tools.sandbox.state import SandboxState, _authorized_body, _err


async def _autoreply(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    return JSONResponse(st.autoreply)


def _caller(request: Request, st: SandboxState) -> str:
    """The account a token-bearing call is for: each has its own menu."""
    return st._owner(request.query_params.get("access_token")) or st.appid


async def _selfmenu(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    menu = st.menus.get(_caller(request, st))
    if menu is None:
        return JSONResponse(st.selfmenu)
    # A menu made through the API replaces the console's, in the console's own shape.
    return JSONResponse({"is_menu_open": 1, "selfmenu_info": {
        "button": [_console_shape(b) for b in menu["button"]]}})


def _console_shape(button: dict[str, Any]) -> dict[str, Any]:
    subs = button.get("sub_button")
    if not subs:
        return {k: v for k, v in button.items() if k != "sub_button"}
    return {"name": button.get("name", ""), "sub_button": {"list": list(subs)}}


async def _menu_create(request: Request, st: SandboxState) -> Response:
    body = await _authorized_body(request, st)
    if isinstance(body, Response):
        return body
    problems = menu_problems(body)
    if problems:  # WeChat names the first fault only
        first = problems[0]
        return _err(first.errcode, f"{MENU_ERRORS.get(first.errcode, 'invalid menu')} "
                    f"({first.where}: {first.message})")
    st.menus[_caller(request, st)] = {"button": body["button"]}
    return JSONResponse({"errcode": 0, "errmsg": "ok"})


async def _menu_get(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    menu = st.menus.get(_caller(request, st))
    if menu is None:
        return _err(46003, MENU_ERRORS[46003])
    return JSONResponse({"menu": {"button": menu["button"]}})


async def _menu_delete(request: Request, st: SandboxState) -> Response:
    if code := st._check_token(request.query_params.get("access_token")):
        return _err(code)
    st.menus.pop(_caller(request, st), None)
    return JSONResponse({"errcode": 0, "errmsg": "ok"})
