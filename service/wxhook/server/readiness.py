"""/readyz: can this instance take pushes? And, for an operator, what is degraded.

Readiness is about this instance only: its start-up finished (settings and rules loaded,
the rules watcher running) and its event loop answers. A fault every replica shares (the
WeChat API, the access token, a Redis outage served from process memory) would fail every
replica's probe at the same moment; the Service would then answer WeChat with nothing at
all, while each instance could still greet with the fallback. Such faults are reported
(the operator view, `wxhook check`), counted (wxhook_dependency_up) and alerted
(deploy/prometheus/alerts.yml), and never fail readiness.

The probe's answer is `{"ready": true}` and nothing else: it is reachable by whoever
reaches the port, and the details (WeChat's errmsg carries the egress IP; Redis's host,
port and db; the rules path) are for an operator on this host.

With an accounts file the operator view stays the same size for two accounts or a
thousand: counts (in the file, in use, faulty) and the faulty accounts by name, at most
MAX_LISTED of them; `?verbose&account=NAME` shows one account in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse

from wxhook.errors import WeChatAPIError
from wxhook.server.metrics import Metrics
from wxhook.server.rules_source import RulesSource
from wxhook.server.tokens import TokenManager
from wxhook.server.wechat_api import WeChatAPI
from wxhook.store import Store

if TYPE_CHECKING:
    from wxhook.server.account_hub import AccountHub

WATCH_INTERVAL = 5.0  # seconds between looks at the shared dependencies
TOKEN_WAIT = 2.0      # seconds the operator view waits for a token it has to fetch
MAX_LISTED = 20       # faulty accounts named in the operator view; the others are counted
NOT_YET_USED = "not yet used"  # an account of the file no push or sign-in has needed yet
# A request that carries any of these came through a proxy: its socket peer is the proxy,
# so "from loopback" would say nothing about who is asking.
PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
                           b"x-forwarded-proto", b"x-real-ip", b"via", b"x-client-ip",
                           b"true-client-ip", b"cf-connecting-ip"})
_VERBOSE_REFUSED = ("the verbose view answers requests from this host's loopback without "
                    "proxy headers: curl http://127.0.0.1:PORT/readyz?verbose on the host, "
                    "or run `wxhook check`")


def from_this_host(request: Request) -> bool:
    """True for a direct request from loopback; never for one a proxy passed on."""
    if any(name in PROXY_HEADERS for name, _ in request.scope.get("headers", ())):
        return False
    client = request.scope.get("client")
    if not client:
        return False  # a unix socket: a proxy's, as likely as an operator's
    try:
        ip = ipaddress.ip_address(str(client[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Reloaded(Protocol):
    """A file in force that reloads (the accounts file): what /readyz?verbose shows of it."""

    def status(self) -> dict[str, Any]: ...


class Readiness:
    """This instance's readiness, and the state of what all instances share."""

    def __init__(self, *, tokens: TokenManager | None, store: Store, api: WeChatAPI | None,
                 rules: RulesSource | None, metrics: Metrics,
                 accounts: _Reloaded | None = None, hub: AccountHub | None = None) -> None:
        self.tokens = tokens
        self.hub = hub  # the accounts file's accounts (then tokens, api and rules are None)
        self.store = store
        self.api = api
        self.rules = rules
        self.accounts = accounts
        self.metrics = metrics
        self.started = False   # start-up finished (the app's lifespan)
        self.stopping = False  # shutdown began

    def problems(self) -> list[str]:
        """What keeps this instance from taking pushes (empty: ready)."""
        # create_app() loaded the settings and the rules (a bad file refuses to start);
        # start-up is done once the lifespan runs, rules watcher included.
        if not self.started:
            return ["starting"]
        return ["stopping"] if self.stopping else []

    def observe(self) -> dict[str, dict[str, Any]]:
        """The shared dependencies as this process last saw them; sets their gauges."""
        out: dict[str, dict[str, Any]] = {}
        if self.tokens is not None:
            out["token"] = token = token_check(self.tokens)
            self.metrics.dependency_up.labels("token", self.metrics.account).set(
                1 if token["ok"] else 0)
        if self.hub is not None:
            out["accounts"] = self._accounts()
        status_of = getattr(self.store, "status", None)
        if self.store.shared and callable(status_of):
            redis = status_of()  # RedisStore: where, and whether an outage is served locally
            redis_ok = "fallback_local_s" not in redis
            out["redis"] = {"ok": redis_ok, **redis}
            self.metrics.dependency_up.labels("redis", "").set(1 if redis_ok else 0)
        circuits = self.api.circuits() if self.api is not None else None
        if circuits:
            out["circuits_open"] = {"ok": False, **circuits}
        return out

    async def look(self, *, fetch_token: bool) -> dict[str, dict[str, Any]]:
        """observe(), after asking Redis (and, when none is cached, WeChat for a token)."""
        errors: dict[str, dict[str, str]] = {}
        if fetch_token and self.tokens is not None and not self.tokens.status()["cached"]:
            try:
                await self.tokens.get(deadline=time.monotonic() + TOKEN_WAIT)
            except WeChatAPIError:
                pass  # tokens.status() names it
            except Exception as exc:  # noqa: BLE001 - e.g. the store failing: reported, no 500
                errors["token"] = {"store": type(exc).__name__}
        if self.store.shared:
            try:
                await self.store.ping()  # trips the local fallback (and its probe) when down
            except Exception as exc:  # noqa: BLE001 - reported, never a 500
                errors["redis"] = {"error": type(exc).__name__, "reason": str(exc)[:300]}
        seen = self.observe()
        for name, error in errors.items():
            seen[name] = {**seen.get(name, {}), "ok": False, **error}
            if name == "redis":
                self.metrics.dependency_up.labels("redis", "").set(0)
        return seen

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Ready while inside; the shared dependencies watched and counted meanwhile."""
        watcher = asyncio.get_running_loop().create_task(self._watch())
        self.started, self.stopping = True, False
        self.metrics.ready.set(1)
        try:
            yield
        finally:
            self.stopping = True
            self.metrics.ready.set(0)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self) -> None:
        # The gauges stay current on an idle instance too (no push, no probe, no scrape).
        while True:
            with contextlib.suppress(Exception):
                await self.look(fetch_token=False)
            await asyncio.sleep(WATCH_INTERVAL)

    async def endpoint(self, request: Request) -> JSONResponse:
        """GET /readyz: {"ready": bool}; with ?verbose, from this host, the details."""
        problems = self.problems()
        ready = not problems
        self.metrics.ready.set(1 if ready else 0)
        status = 200 if ready else 503
        if "verbose" not in request.query_params:
            return JSONResponse({"ready": ready}, status_code=status)
        if not from_this_host(request):
            return JSONResponse({"error": _VERBOSE_REFUSED}, status_code=403)
        checks: dict[str, Any] = {"settings": {"ok": True}}
        if self.rules is not None:
            checks["rules"] = self.rules.status()  # a refused file keeps the old rules: ready
        if self.accounts is not None:
            checks["accounts"] = self.accounts.status()  # the same for the accounts file
        dependencies = await self.look(fetch_token=True)
        file_status = checks.get("accounts", {})
        checks.update(dependencies)
        if self.hub is not None:
            # One check: the accounts file in force, and how its accounts are doing.
            checks["accounts"] = {**file_status, **dependencies["accounts"]}
            self._list_healthy(checks["accounts"])
            name = request.query_params.get("account")
            if name is not None:
                checks["account"] = await self._account(name)
        degraded = sorted(name for name, check in dependencies.items() if not check["ok"])
        return JSONResponse({"ready": ready, "problems": problems, "degraded": degraded,
                             "checks": checks}, status_code=status)

    def _accounts(self) -> dict[str, Any]:
        """Counts, and the faulty accounts in use (token or circuits) by name; the token
        gauge of each account in use."""
        assert self.hub is not None
        faults: dict[str, dict[str, Any]] = {}
        built = list(self.hub.built.items())
        for name, bundle in built:
            token = token_check(bundle.tokens)
            self.metrics.dependency_up.labels("token", name).set(1 if token["ok"] else 0)
            circuits = bundle.webhook.api.circuits()
            if not token["ok"] or circuits:
                faults[name] = {"token": token, **({"circuits_open": circuits}
                                                   if circuits else {})}
        total = len(self.hub.accounts)
        listed = dict(sorted(faults.items())[:MAX_LISTED])
        out: dict[str, Any] = {"ok": not faults, "accounts": total, "built": len(built),
                               "not_yet_used": max(0, total - len(built)),
                               "faulty": len(faults), "faults": listed}
        if len(faults) > len(listed):
            out["faults_not_listed"] = len(faults) - len(listed)
        return out

    def _list_healthy(self, accounts: dict[str, Any]) -> None:
        """Fill the room the faults leave (MAX_LISTED in all) with the other accounts: those
        in use with their token, then those not yet used; a small file is shown whole."""
        assert self.hub is not None
        room = MAX_LISTED - len(accounts["faults"])
        others: dict[str, Any] = {}
        for name, bundle in list(self.hub.built.items()):
            if len(others) >= room:
                break
            if name not in accounts["faults"]:
                others[name] = {"token": token_check(bundle.tokens)}
        for name in self.hub.accounts:
            if len(others) >= room:
                break
            if name not in self.hub.built:
                others[name] = NOT_YET_USED
        accounts["others"] = others
        shown = len(accounts["faults"]) + len(others) + accounts.get("faults_not_listed", 0)
        if accounts["accounts"] > shown:
            accounts["others_not_listed"] = accounts["accounts"] - shown

    async def _account(self, name: str) -> dict[str, Any]:
        """One account in full: its token (fetched now if none is cached), circuits, rules."""
        assert self.hub is not None
        if name not in self.hub.accounts:
            return {"ok": False, "error": "no such account in the accounts file"}
        bundle = self.hub.built.get(name)
        if bundle is None:
            return {"ok": True, "name": name, "state": NOT_YET_USED}
        if not bundle.tokens.status()["cached"]:
            # A WeChat error is named by tokens.status(); a store error is no 500 either.
            with contextlib.suppress(Exception):
                await bundle.tokens.get(deadline=time.monotonic() + TOKEN_WAIT)
        token = token_check(bundle.tokens)
        circuits = bundle.webhook.api.circuits()
        out: dict[str, Any] = {"ok": token["ok"] and not circuits, "name": name,
                               "app_id": bundle.settings.app_id, "token": token}
        if circuits:
            out["circuits_open"] = circuits
        source = self.hub.rules.get(bundle.settings.rules)
        if source is not None:
            out["rules"] = source.status()
        return out


def token_check(tokens: TokenManager) -> dict[str, Any]:
    """A token manager's status, with ok: not cached and no error is no fault (nothing
    needed one yet)."""
    token = tokens.status()
    return {"ok": bool(token["cached"]) or "error" not in token, **token}
