"""Many accounts in one process: `/wechat/{name}`, each account's pieces built on its first push.

Each account gets what a single-account deployment has, built from its own credentials:
its Settings, HTTP client, token manager, profiles, router, webhook (guard, dedup, state)
and OAuth (/oauth/{name}/, /me/{name}), all keyed `wxhook:{appid}:`. Nothing is shared
but the store, the metrics and the bounds on what anyone can cause (log lines, sign-ins),
so one account's wrong secret, token back-off or hanging upstream holds only its own
connections and locks. Nothing is built, and nothing asked of WeChat, before an account's
first push or sign-in: a file of a thousand accounts starts as fast as one of two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace

import httpx
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from wxhook.defaults import default_router
from wxhook.errors import SettingsError
from wxhook.router import Router
from wxhook.rules import RulesError
from wxhook.rules_router import RulesAnswerer
from wxhook.server.accounts import Account, load_accounts, root_of
from wxhook.server.config import SANDBOX_APP_ID, Settings
from wxhook.server.delivery import LATE_LIMIT, LateDelivery
from wxhook.server.loglimit import LimitedLog
from wxhook.server.logs import get_logger
from wxhook.server.metrics import Metrics
from wxhook.server.oauth import OAuth
from wxhook.server.profiles import ProfileRepo, Profiles, StoreProfileRepo
from wxhook.server.ratelimit import WindowLimit
from wxhook.server.rules_source import RulesSource
from wxhook.server.signature import LocalNonces
from wxhook.server.store.fifo import FifoMemory
from wxhook.server.store.sqlite import SqliteProfileRepo
from wxhook.server.tokens import TokenManager, api_with_tokens
from wxhook.server.webhook import Webhook
from wxhook.server.wechat_api import new_http_client
from wxhook.store import Store

PREFIX = "/wechat/"
ROOT_PATH = "/wechat"  # a one-account deployment's URL: the `root:` account's, if any
RETIRE_WAIT = 60.0  # seconds a retired account's pushes get to finish before its close
_NOT_FOUND = b"no such account"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8"),
         (b"content-length", str(len(_NOT_FOUND)).encode())]


@dataclass(slots=True)
class Bundle:
    """One account's serving pieces; `http` is closed with it when it owns it."""

    settings: Settings
    webhook: Webhook
    tokens: TokenManager
    delivery: LateDelivery
    http: httpx.AsyncClient | None
    oauth: OAuth
    # Pushes, sign-ins and token authority requests inside it now (`with bundle:`): a
    # retired bundle closes after them.
    busy: int = 0

    def __enter__(self) -> Bundle:
        self.busy += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.busy -= 1


def account_settings(base: Settings, account: Account) -> Settings:
    """`base` with the account's credentials, mode, rules and handlers in place."""
    # The session secret signs OAuth state and cookies: never the same for two accounts.
    seed = (f"wxhook-session:{account.name}:{account.app_id}:"
            f"{account.app_secret.get_secret_value()}:{base.session_secret.get_secret_value()}")
    return base.model_copy(update={
        "app_id": account.app_id, "app_secret": account.app_secret, "token": account.token,
        "encoding_aes_key": account.encoding_aes_key, "message_mode": account.message_mode,
        "rules": account.rules or base.rules, "handlers": account.handlers or base.handlers,
        "session_secret": SecretStr(hashlib.sha256(seed.encode()).hexdigest())})


def load_sources(base: Settings, accounts: dict[str, Account],
                 metrics: Metrics | None = None, *, known: dict[str, RulesSource] | None = None,
                 last_good_dir: str | None = None) -> dict[str, RulesSource]:
    """Each rules file the accounts name, read now (those in `known` kept as they are), and
    each handlers module imported, so start-up or a reload refuses a bad one (SettingsError);
    accounts naming one file share its source. With `last_good_dir` (several workers), each
    file's last good copy is kept there for a worker started again."""
    on_result = None if metrics is None else (
        lambda result: metrics.rules_reloads.labels(result).inc())
    sources: dict[str, RulesSource] = {}
    for account in accounts.values():
        path = account.rules or base.rules
        if path and known is not None and path in known:
            sources[path] = known[path]
        elif path and path not in sources:
            copy = None if not last_good_dir else os.path.join(
                last_good_dir, f"rules-{hashlib.sha256(path.encode()).hexdigest()[:16]}.last-good")
            try:
                sources[path] = RulesSource(path, on_result=on_result, last_good=copy)
            except RulesError as exc:
                raise SettingsError(f"account {account.name}: rules {path} is not valid:\n  "
                                    + "\n  ".join(exc.problems)) from None
    for spec in {account.handlers or base.handlers for account in accounts.values()}:
        default_router(spec)  # a module that cannot be imported: SettingsError
    return sources


def settings_of(base: Settings, name: str) -> Settings:
    """The settings of account `name` in base's WXHOOK_ACCOUNTS (SettingsError: none such)."""
    if not base.accounts:
        raise SettingsError(f"--account {name} needs WXHOOK_ACCOUNTS (an accounts file)")
    accounts = load_accounts(base.accounts)
    if name not in accounts:
        known = ", ".join(list(accounts)[:10]) + (", ..." if len(accounts) > 10 else "")
        raise SettingsError(f"no account named {name!r} in {base.accounts} (known: {known})")
    return account_settings(base, accounts[name])


class AccountHub:
    """ASGI app for `/wechat/{name}`: the named account's webhook, or 404."""

    def __init__(self, base: Settings, accounts: dict[str, Account], *, store: Store,
                 metrics: Metrics, http: httpx.AsyncClient | None = None,
                 router: Router | None = None, profile_repo: ProfileRepo | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sources: dict[str, RulesSource] | None = None) -> None:
        self.base = base
        self.accounts = accounts
        self.store = store
        self.metrics = metrics
        self.http = http
        self.router = router
        self.profile_repo = profile_repo
        self.clock = clock
        self.wall_clock = wall_clock
        self.built: dict[str, Bundle] = {}
        self.root = root_of(accounts)  # also at /wechat, /oauth/login and /me
        self.retiring: dict[asyncio.Task[None], Bundle] = {}  # removed or changed, closing
        self.sqlite: SqliteProfileRepo | None = None
        self.rules = load_sources(base, accounts, metrics) if sources is None else sources
        self.refusals = LimitedLog(get_logger("wxhook.push"), metrics=metrics, clock=clock)
        self.guard_quiet = LimitedLog(get_logger("wxhook.guard"), metrics=metrics)
        # Without Redis, one retry memory and one nonce memory for all the accounts, keys
        # filed under each account's appid: each is bounded for the process, so a thousand
        # accounts hold what one busy account would, not a thousand bounds' worth.
        self.retries = None if store.shared else FifoMemory(ttl=base.dedup_ttl, clock=clock)
        self.nonces = None if store.shared else LocalNonces(window=base.timestamp_window,
                                                            clock=wall_clock)
        # Sign-ins of all accounts count together, and their refusals share one bound: a
        # client spreading over many accounts' callbacks gets no more than at one.
        self.oauth_limit = WindowLimit(per_client=base.oauth_limit_per_client,
                                       total=base.oauth_limit_total)
        self.oauth_refusals = LimitedLog(get_logger("wxhook.oauth"), metrics=metrics)

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        path = str(scope["path"])
        # /wechat itself: the file's `root:` account, if it names one.
        name = path[len(PREFIX):] if path != ROOT_PATH else self.root or ""
        bundle = self.bundle(name)
        if bundle is not None:
            # Counted in, not through serving(): a generator-based context manager per
            # push costs more than the count itself.
            with bundle:
                await bundle.webhook(scope, receive, send)
            return
        # Anyone can ask for any name: the line is bounded like a refused push's.
        self.refusals.warning("unknown_account", "push_refused", status=404,
                              reason="unknown_account", path_length=len(name))
        await send({"type": "http.response.start", "status": 404, "headers": _TEXT})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": _NOT_FOUND})  # type: ignore[operator]

    def bundle(self, name: str) -> Bundle | None:
        """The account's pieces, built now if this is its first push; None: no such account."""
        bundle = self.built.get(name)
        if bundle is None and (account := self.accounts.get(name)) is not None:
            # No await between the look-up and the store: concurrent first pushes of one
            # account build it once (and so fetch its token once).
            bundle = self.built[name] = self._build(account)
        return bundle

    @contextlib.contextmanager
    def serving(self, name: str) -> Iterator[Bundle | None]:
        """The account's pieces (None: no such account), kept open while the caller uses
        them: a reload that removes or changes the account closes them only after it is
        done. Sign-ins and token authority requests take their bundle from here (a push
        enters its bundle itself, in __call__)."""
        bundle = self.bundle(name)
        if bundle is None:
            yield None
            return
        with bundle:
            yield bundle

    def _build(self, account: Account) -> Bundle:
        settings = account_settings(self.base, account)
        # Its own client (pool) unless tests inject one: a hanging upstream of one account
        # fills only its own connections.
        own_http = None if self.http is not None else new_http_client(
            timeout=settings.http_timeout)
        http = own_http if own_http is not None else self.http
        assert http is not None
        namespace = f"wxhook:{settings.app_id}:"
        metrics = self.metrics.for_account(account.name)  # its series: account="{name}"
        api, tokens = api_with_tokens(http, settings, store=self.store, namespace=namespace,
                                      metrics=metrics, clock=self.wall_clock)
        repo: ProfileRepo = (self.profile_repo if self.profile_repo is not None
                             else self._sqlite().view(settings.app_id)
                             if not self.store.shared
                             else StoreProfileRepo(self.store, namespace=namespace))
        profiles = Profiles(api, repo, ttl=settings.profile_ttl,
                            batch_window=settings.batch_window)
        delivery = LateDelivery(api, metrics=metrics)
        router = self.router
        if router is None:
            source = self.rules.get(settings.rules)
            answerer = None if source is None else RulesAnswerer(
                source.current, store=self.store, namespace=namespace)
            router = default_router(settings.handlers, rules=answerer)
        webhook = Webhook(settings, store=self.store, router=router, api=api,
                          profiles=profiles, delivery=delivery, metrics=metrics,
                          clock=self.clock, wall_clock=self.wall_clock, account=account.name,
                          retries=self.retries, nonces=self.nonces)
        # One bound for refused pushes across all accounts: spreading a flood over many
        # account URLs must not multiply the lines it writes.
        webhook.refusals = self.refusals
        webhook.guard.quiet = self.guard_quiet
        oauth = OAuth(settings, api=api, store=self.store, repo=repo, profiles=profiles,
                      namespace=namespace, metrics=metrics, limit=self.oauth_limit,
                      account=account.name, refusals=self.oauth_refusals)
        return Bundle(settings, webhook, tokens, delivery, own_http, oauth)

    def oauth_routes(self) -> list[Route]:
        """/oauth/{name}/login, /oauth/{name}/callback and /me/{name}: the account's OAuth;
        /oauth/login and /me: the `root:` account's (its callback stays its own)."""
        Step = Callable[[Request], Awaitable[Response]]

        def to(step: Callable[[OAuth], Step]) -> Step:
            async def endpoint(request: Request) -> Response:
                name = request.path_params.get("name", self.root or "")
                # A reload retiring the account waits for the exchange.
                with self.serving(name) as bundle:
                    if bundle is not None:
                        return await step(bundle.oauth)(request)
                # Anyone can ask for any name: bounded like a push's.
                self.oauth_refusals.warning("unknown_account", "oauth_refused",
                                            status=404, reason="unknown_account")
                return PlainTextResponse(_NOT_FOUND.decode(), status_code=404)
            return endpoint
        return [Route("/oauth/{name}/login", to(lambda o: o.login), methods=["GET", "HEAD"]),
                Route("/oauth/{name}/callback", to(lambda o: o.callback), methods=["GET"]),
                Route("/me/{name}", to(lambda o: o.me), methods=["GET", "HEAD"]),
                Route("/oauth/login", to(lambda o: o.login), methods=["GET", "HEAD"]),
                Route("/me", to(lambda o: o.me), methods=["GET", "HEAD"])]

    def replace(self, accounts: dict[str, Account],
                sources: dict[str, RulesSource]) -> tuple[list[str], list[str], list[str]]:
        """Serve `accounts` (checked, with their rules `sources`) from the next push on; the
        names added, removed and changed. A removed or changed account's pieces are closed
        once the pushes inside them are answered and their late deliveries sent; a changed
        one is built again on its next push; the others keep theirs (tokens, work)."""
        old = self.accounts
        added = [name for name in accounts if name not in old]
        removed = [name for name in old if name not in accounts]
        # Only the hub reads `root`: an account that gains or loses it keeps its pieces.
        changed = [name for name in accounts if name in old
                   and replace(accounts[name], root=False) != replace(old[name], root=False)]
        self.accounts, self.rules = accounts, sources
        self.root = root_of(accounts)
        for name in removed + changed:
            bundle = self.built.pop(name, None)
            if bundle is not None:
                task = asyncio.get_running_loop().create_task(self._retire(name, bundle))
                self.retiring[task] = bundle
                task.add_done_callback(self.retiring.pop)
        return added, removed, changed

    async def _retire(self, name: str, bundle: Bundle) -> None:
        # Pushes already inside finish there (the deadline bounds them); then the replies
        # they handed to late delivery go out (LATE_LIMIT bounds those), then the close.
        # Polled, not an Event: the push path only counts, and a few looks a second at a
        # retired account cost nothing.
        until = time.monotonic() + RETIRE_WAIT
        while bundle.busy and time.monotonic() < until:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = await bundle.delivery.drain(LATE_LIMIT + 5.0)
        await _close(bundle)
        if name not in self.built:
            # Removed, or changed and not used since: no gauge of the old pieces stays
            # behind (a fixed secret must not go on alerting until the next push).
            self.metrics.forget_account(name)
        get_logger("wxhook.accounts").info("account_retired", account=name,
                                           late_deliveries_abandoned=left)

    async def aclose(self, grace: float) -> int:
        """Give late deliveries `grace` seconds, close what the accounts own (those retiring
        too); the number of late deliveries abandoned."""
        for task in list(self.retiring):
            task.cancel()
        bundles = [*self.built.values(), *self.retiring.values()]
        await asyncio.gather(*self.retiring, return_exceptions=True)
        left = await asyncio.gather(*(b.delivery.drain(grace) for b in bundles))
        for bundle in bundles:
            await _close(bundle)
        if self.sqlite is not None:
            await self.sqlite.aclose()
        return sum(left)

    def _sqlite(self) -> SqliteProfileRepo:
        """The profile file every account shares without Redis (rows keyed by appid)."""
        if self.sqlite is None:
            # The sandbox's appid as the file's owner: no account adopts the rows of a
            # single-account file written before the appid key (they are not its followers
            # more than another account's).
            self.sqlite = SqliteProfileRepo(self.base.profile_db, appid=SANDBOX_APP_ID,
                                            sandbox_appid=SANDBOX_APP_ID)
        return self.sqlite


async def _close(bundle: Bundle) -> None:
    """Close what the account's pieces own."""
    if bundle.http is not None and not bundle.http.is_closed:
        await bundle.http.aclose()
