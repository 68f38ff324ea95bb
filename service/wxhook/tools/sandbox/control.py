"""The sandbox's control API under /_sandbox/: faults, stats, configuration, OAuth codes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxhook.tools.sandbox.state import DEMO_OPENID, Fault, SandboxState, _json_body


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

    async def console(request: Request) -> Response:
        body = await _json_body(request)
        allowed = {"autoreply", "selfmenu", "menu"}
        if body is None or set(body) - allowed or not all(
                isinstance(v, dict) or (k == "menu" and v is None) for k, v in body.items()):
            return JSONResponse({"error": f"body may hold only {sorted(allowed)}, each an "
                                 "object as the WeChat API returns it (menu may be null)"},
                                status_code=400)
        for key, value in body.items():
            setattr(st, key, value)
        return JSONResponse({"ok": True})

    return [
        Route("/_sandbox/faults", add_fault, methods=["POST"]),
        Route("/_sandbox/faults", done(st.clear_faults), methods=["DELETE"]),
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/invalidate", done(st.invalidate_tokens), methods=["POST"]),
        Route("/_sandbox/reset", done(st.reset), methods=["POST"]),
        Route("/_sandbox/config", config, methods=["POST"]),
        Route("/_sandbox/oauth/code", oauth_code, methods=["POST"]),
        Route("/_sandbox/console", console, methods=["POST"]),
    ]

