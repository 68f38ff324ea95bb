"""The token authority: each account's access token, served to the owner's other systems.

A CRM, a shop and a marketing tool on the same appid that each fetch a token kill one
another's (40001), and stable_token's force_refresh has a daily quota. wxhook already keeps
one token per account for the whole deployment, so it hands that token out:
`GET /internal/accounts/{name}/token`, and `POST .../token/invalid` when WeChat rejected it.
Both go through the account's TokenManager, exactly as wxhook's own calls do: a token is
fetched only when none is valid, a reported one is expired only while it is still the
current one, and a token rejected right after a refresh puts refreshes on back-off.

Off unless WXHOOK_INTERNAL_KEY is set; then every route here, the docs included, answers
only a request carrying the key, checked before anything else is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field, SecretStr
from starlette.responses import Response
from starlette.types import Message

from wxhook.errors import BodyTooLarge, GuardError, WeChatAPIError
from wxhook.server.guard import ClientGone, read_body
from wxhook.server.loglimit import LimitedLog
from wxhook.server.logs import get_logger
from wxhook.server.metrics import DEFAULT_ACCOUNT, Metrics
from wxhook.server.ratelimit import WindowLimit
from wxhook.server.tokens import TokenManager

if TYPE_CHECKING:
    from wxhook.server.account_hub import AccountHub

PREFIX = "/internal"
OTHER = "other"                 # a label value for names nobody vouched for
CALLER_RE = re.compile(r"[a-z0-9-]{1,32}")
MAX_CALLERS = 32                # distinct caller labels per process; beyond, "other"
LEASE_WAIT = 15.0               # seconds a request waits for a refresh (a peer's included)
BODY_WAIT = 5.0                 # seconds a report's body may take to arrive
MAX_BODY = 4096                 # bytes of a report: a token is at most 2048 characters
# Each instance keeps its own counts; the overall bound only caps many addresses at once.
CALLERS_AT_FULL_RATE = 50


AccountName = Annotated[str, Path(description=f"The account: `{DEFAULT_ACCOUNT}` without an "
                                              "accounts file, else its name in WXHOOK_ACCOUNTS")]


class TokenAnswer(BaseModel):
    """The token to use now."""

    access_token: str = Field(description="The account's access token: the one every wxhook "
                                          "instance uses. A secret: never log it.")
    expires_in: int = Field(description="Seconds it has left. Keep it until then, unless "
                                        "WeChat rejects it: then report it.")


class InvalidReport(BaseModel):
    """A token WeChat rejected."""

    access_token: str = Field(min_length=1, max_length=2048,
                              description="The token a WeChat API call answered with 40001, "
                                          "40014 or 42001.")


class BadField(BaseModel):
    """One thing wrong with a request's body (the value itself is never repeated)."""

    loc: list[str | int]
    msg: str
    type: str


class BadRequest(BaseModel):
    """A body that is not a report: what is wrong, without the body."""

    detail: list[BadField]


class Problem(BaseModel):
    """Why there is no token in the answer."""

    detail: str
    errcode: int | None = Field(None, description="WeChat's errcode, when WeChat refused")
    retry_in_s: float | None = Field(None, description="When to ask again (also Retry-After)")


@dataclass(frozen=True, slots=True)
class Accounts:
    """The deployment's accounts, as the authority sees them."""

    # The account's token manager, usable until the block ends (None: no such account).
    using: Callable[[str], contextlib.AbstractContextManager[TokenManager | None]]
    known: Callable[[str], bool]  # without building anything


def single_account(tokens: TokenManager) -> Accounts:
    """The WECHAT_* deployment: one account, named `default`."""
    return Accounts(lambda name: contextlib.nullcontext(
                        tokens if name == DEFAULT_ACCOUNT else None),
                    lambda name: name == DEFAULT_ACCOUNT)


def file_accounts(hub: AccountHub) -> Accounts:
    """The accounts of WXHOOK_ACCOUNTS (an AccountHub), each built on first use."""
    @contextlib.contextmanager
    def using(name: str) -> Iterator[TokenManager | None]:
        # Held like a push or a sign-in: a reload retiring the account closes its HTTP
        # client only after the token is handed out (or the wait for it ends).
        with hub.serving(name) as bundle:
            yield None if bundle is None else bundle.tokens

    return Accounts(using, lambda name: name in hub.accounts)


def mount_authority(app: FastAPI, key: SecretStr | None, accounts: Accounts, *,
                    metrics: Metrics, per_client: int) -> TokenAuthority | None:
    """Add the /internal routes to `app` when a key is set; without one they do not exist."""
    if key is None:
        return None
    authority = TokenAuthority(key, accounts, metrics=metrics, per_client=per_client)
    app.include_router(authority.router())
    return authority


class TokenAuthority:
    """The /internal routes: the key, the per-client limit, the counts and the answers."""

    def __init__(self, key: SecretStr, accounts: Accounts, *, metrics: Metrics,
                 per_client: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._digest = self._hash(key.get_secret_value())
        self.accounts = accounts
        self.metrics = metrics
        self.limit = WindowLimit(per_client=per_client,
                                 total=per_client * CALLERS_AT_FULL_RATE, clock=clock)
        self.callers: set[str] = set()
        # Anyone who reaches the port can make these lines: bounded, like a refused push's.
        self.lines = LimitedLog(get_logger("wxhook.internal"), metrics=metrics, clock=clock)

    # -- who is asking -----------------------------------------------------------------

    @staticmethod
    def _hash(text: str) -> bytes:
        return hashlib.sha256(text.encode()).digest()

    def authorized(self, header: str | None) -> bool:
        """`Authorization: Bearer <key>`, compared in constant time.

        Digests of equal length are compared, so neither the time taken nor the answer
        says how long the key is or how much of it a guess got right.
        """
        scheme, _, given = (header or "").strip().partition(" ")
        same = hmac.compare_digest(self._hash(given.strip()), self._digest)
        return same and scheme.lower() == "bearer"

    def caller(self, header: str | None, *, trusted: bool) -> str:
        """The X-Wxhook-Caller name as a label: [a-z0-9-]{1,32}, at most MAX_CALLERS of
        them, claimed only with the key; anything else is "other"."""
        if header is None or not CALLER_RE.fullmatch(header):
            return OTHER
        if header in self.callers:
            return header
        if trusted and len(self.callers) < MAX_CALLERS:
            self.callers.add(header)
            return header
        return OTHER

    def refusal(self, request: Request, action: str) -> Response | None:
        """429 or 401 for a request that may not go on; None for one that may."""
        client = request.client.host if request.client else ""
        account = self._account_of(request)
        if not self.limit.allow(client):
            caller = self.caller(request.headers.get("x-wxhook-caller"), trusted=False)
            self.count(account, caller, action, "rate_limited")
            wait = max(1, math.ceil(self.limit.retry_after(client)))
            self.lines.warning("rate_limited", "internal_rate_limited", client=client,
                               caller=caller, action=action, retry_in_s=wait)
            return JSONResponse({"detail": "too many requests from this address; ask "
                                 "again after Retry-After seconds"}, status_code=429,
                                headers={"Retry-After": str(wait)})
        if not self.authorized(request.headers.get("authorization")):
            caller = self.caller(request.headers.get("x-wxhook-caller"), trusted=False)
            self.count(account, caller, action, "unauthorized")
            self.lines.warning("unauthorized", "internal_unauthorized", client=client,
                               caller=caller, action=action,
                               has_header="authorization" in request.headers)
            return JSONResponse({"detail": "needs Authorization: Bearer <WXHOOK_INTERNAL_KEY>"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        request.state.caller = self.caller(request.headers.get("x-wxhook-caller"),
                                           trusted=True)
        return None

    def _account_of(self, request: Request) -> str:
        """The account label: the name when the deployment has it, "-" for the docs."""
        name = request.path_params.get("name")
        return "-" if name is None else name if self.accounts.known(name) else OTHER

    def count(self, account: str, caller: str, action: str, outcome: str) -> None:
        """wxhook_internal_token_requests_total, every label value bounded."""
        self.metrics.internal_token_requests.labels(account, caller, action, outcome).inc()

    def too_large(self, request: Request, action: str) -> JSONResponse:
        """413 for a body over MAX_BODY: read no further."""
        self.count(self._account_of(request), request.state.caller, action, "too_large")
        return JSONResponse({"detail": f"the body is over {MAX_BODY} bytes; a report is "
                             '{"access_token": "..."}'}, status_code=413)

    def unread(self, request: Request, action: str, exc: GuardError) -> JSONResponse:
        """The body could not be read: 408 when it stalled, 400 for a bad length."""
        self.count(self._account_of(request), request.state.caller, action, exc.reason)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def bad_request(self, request: Request, action: str,
                    exc: RequestValidationError) -> JSONResponse:
        """422 saying what is wrong with the body, never repeating it: FastAPI's own answer
        echoes the input, and the input of a report is an access token."""
        self.count(self._account_of(request), request.state.caller, action, "bad_request")
        problems = [BadField(loc=list(e.get("loc", ())), msg=str(e.get("msg", "")),
                             type=str(e.get("type", ""))) for e in exc.errors()]
        return JSONResponse(BadRequest(detail=problems).model_dump(), status_code=422)

    # -- the answers -------------------------------------------------------------------

    def _no_account(self, name: str, request: Request, action: str) -> JSONResponse:
        self.count(OTHER, request.state.caller, action, "unknown_account")
        self.lines.warning("unknown_account", "internal_unknown_account",
                           caller=request.state.caller, action=action, name_length=len(name))
        return JSONResponse({"detail": "no account of that name"}, status_code=404)

    async def get_token(self, name: str, request: Request) -> Response | TokenAnswer:
        """The account's token: the cached one, or one fetch for the whole deployment."""
        with self.accounts.using(name) as tokens:
            if tokens is None:
                return self._no_account(name, request, "get")
            return await self._lease(name, tokens, request)

    async def _lease(self, name: str, tokens: TokenManager,
                     request: Request) -> Response | TokenAnswer:
        try:
            token, left = await tokens.lease(deadline=time.monotonic() + LEASE_WAIT)
        except WeChatAPIError as exc:
            self.count(name, request.state.caller, "get", "unavailable")
            return _unavailable(tokens, exc)
        self.count(name, request.state.caller, "get", "ok")
        return TokenAnswer(access_token=token, expires_in=left)

    async def report_invalid(self, name: str, report: InvalidReport,
                             request: Request) -> Response | TokenAnswer:
        """Expire the reported token if it is still the current one; the token to use now."""
        with self.accounts.using(name) as tokens:
            if tokens is None:
                return self._no_account(name, request, "invalid")
            return await self._report(name, tokens, report, request)

    async def _report(self, name: str, tokens: TokenManager, report: InvalidReport,
                      request: Request) -> Response | TokenAnswer:
        caller = request.state.caller
        # What every instance uses now: another instance may have replaced it already.
        await tokens.follow_store()
        was_current = report.access_token == tokens.current
        refresh_allowed = await tokens.invalidate(report.access_token)
        outcome = "backoff" if not refresh_allowed else "expired" if was_current else "stale"
        self.lines.info(f"reported:{name}", "internal_token_reported_invalid", account=name,
                        caller=caller, outcome=outcome)
        try:
            token, left = await tokens.lease(deadline=time.monotonic() + LEASE_WAIT,
                                             followed=True)
        except WeChatAPIError as exc:
            self.count(name, caller, "invalid", outcome if outcome == "backoff"
                       else "unavailable")
            return _unavailable(tokens, exc)
        self.count(name, caller, "invalid", outcome)
        return TokenAnswer(access_token=token, expires_in=left)

    # -- the routes --------------------------------------------------------------------

    def router(self) -> APIRouter:
        """The /internal routes, each refusing a request without the key before reading it."""
        authority = self

        class KeyedRoute(APIRoute):
            """Limit and key checked first: a request without the key never has its body
            read nor its parameters validated."""

            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()
                action = str(self.name)
                has_body = self.body_field is not None

                async def keyed(request: Request) -> Response:
                    refused = authority.refusal(request, action)
                    if refused is not None:
                        return refused
                    if has_body:
                        try:
                            request = await _capped(request)
                        except BodyTooLarge:
                            return authority.too_large(request, action)
                        except GuardError as exc:  # a stalled body, a bad Content-Length
                            return authority.unread(request, action, exc)
                        except ClientGone:  # nobody left to answer
                            return Response(status_code=400)
                    try:
                        return await handler(request)
                    except RequestValidationError as exc:
                        return authority.bad_request(request, action, exc)
                return keyed

        # Declared for the docs (their Authorize button); KeyedRoute has checked it already.
        bearer = HTTPBearer(auto_error=False, description="WXHOOK_INTERNAL_KEY")
        router = APIRouter(prefix=PREFIX, route_class=KeyedRoute, tags=["token authority"],
                           dependencies=[Depends(bearer)])
        errors: dict[int | str, dict[str, Any]] = {
            401: {"model": Problem, "description": "No key, or the wrong one"},
            404: {"model": Problem, "description": "No account of that name"},
            422: {"model": BadRequest, "description": "Not a report (the body is never "
                                                      "repeated)"},
            429: {"model": Problem, "description": "Too many requests from this address"},
            503: {"model": Problem, "description": "No valid token now (WeChat refused, or "
                                                   "refreshes are backing off)"}}
        with_body = {**errors, 413: {"model": Problem,
                                     "description": f"A body over {MAX_BODY} bytes"}}

        async def get_token(request: Request, name: AccountName) -> Response | TokenAnswer:
            """The account's access token, the one every wxhook instance uses; fetched from
            WeChat only when none is valid."""
            return await authority.get_token(name, request)

        async def report_invalid(report: InvalidReport, request: Request,
                                 name: AccountName) -> Response | TokenAnswer:
            """Report a token WeChat rejected. It is expired only while it is still the
            current one (one refresh for the deployment); the answer is the token to use now.
            A token rejected again right after a refresh is not fetched again at once: 503
            with Retry-After while refreshes back off."""
            return await authority.report_invalid(name, report, request)

        router.add_api_route("/accounts/{name}/token", get_token, methods=["GET"],
                             response_model=TokenAnswer, responses=errors, name="get",
                             summary="The account's access token")
        router.add_api_route("/accounts/{name}/token/invalid", report_invalid,
                             methods=["POST"], response_model=TokenAnswer,
                             responses=with_body, name="invalid",
                             summary="Report a token WeChat rejected")
        schema: dict[str, Any] = {}

        async def openapi(request: Request) -> JSONResponse:
            authority.count("-", request.state.caller, "docs", "ok")
            if not schema:
                schema.update(get_openapi(
                    title="wxhook token authority", version="1",
                    description="The account's access token for the owner's other systems.",
                    routes=router.routes))  # those in the schema: not the docs' own
            return JSONResponse(schema)

        async def docs(request: Request) -> HTMLResponse:
            authority.count("-", request.state.caller, "docs", "ok")
            return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json",
                                       title="wxhook token authority")

        router.add_api_route("/openapi.json", openapi, methods=["GET"],
                             include_in_schema=False, name="docs")
        router.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False,
                             name="docs")
        return router


async def _capped(request: Request) -> Request:
    """`request` with its body read ahead, as a push's is (guard.read_body: never past
    MAX_BODY, never longer than BODY_WAIT): BodyTooLarge, GuardError (408, a bad length)
    or ClientGone instead."""
    body = await read_body(request.scope["headers"], request.receive, MAX_BODY,
                           time.monotonic() + BODY_WAIT)
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if replayed:  # the body is sent: what comes next is the client leaving
            return await request.receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}
    return Request(request.scope, receive)


def _unavailable(tokens: TokenManager, exc: WeChatAPIError) -> JSONResponse:
    """503: no valid token now; when to ask again, from the manager's own back-off."""
    wait = tokens.status().get("retry_in_s")
    retry = max(1, math.ceil(wait)) if isinstance(wait, int | float) else 1
    return JSONResponse({"detail": "no valid access token now", "errcode": exc.errcode,
                         "retry_in_s": retry}, status_code=503,
                        headers={"Retry-After": str(retry)})
