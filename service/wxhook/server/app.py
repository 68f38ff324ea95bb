"""create_app(): wiring only. Clients and stores come in, so tests inject their own."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wxhook.defaults import default_router
from wxhook.router import Router
from wxhook.rules_router import RulesAnswerer
from wxhook.server.account_hub import PREFIX, ROOT_PATH, AccountHub
from wxhook.server.accounts import summary
from wxhook.server.accounts_source import LAST_GOOD_ENV as ACCOUNTS_LAST_GOOD_ENV
from wxhook.server.accounts_source import AccountsSource, watching_accounts
from wxhook.server.authority import file_accounts, mount_authority, single_account
from wxhook.server.config import SANDBOX_APP_ID, Settings
from wxhook.server.delivery import LateDelivery
from wxhook.server.logs import flush_logs, get_logger
from wxhook.server.metrics import Metrics
from wxhook.server.oauth import OAuth
from wxhook.server.profiles import ProfileRepo, Profiles, StoreProfileRepo
from wxhook.server.readiness import Readiness
from wxhook.server.rules_source import LAST_GOOD_ENV, RulesSource, watching
from wxhook.server.store.memory import MemoryStore
from wxhook.server.store.sqlite import SqliteProfileRepo
from wxhook.server.tokens import api_with_tokens
from wxhook.server.webhook import Webhook
from wxhook.server.wechat_api import new_http_client
from wxhook.store import Store

GC_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)
SHUTDOWN_GRACE = 10.0  # seconds given to late deliveries after the last push was answered


class WxhookApp(FastAPI):
    """FastAPI for everything but /wechat, which goes straight to the webhook.

    FastAPI wraps every request in several middleware layers (errors, exceptions, exit
    stacks, body limits); on the hot route they cost more than the whole guard does, and
    the webhook answers every failure itself, so /wechat skips them.
    """

    webhook: Webhook | None = None  # the WECHAT_* account at /wechat
    hub: AccountHub | None = None   # the accounts file's, at /wechat/{name}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/wechat" and self.webhook is not None:
                await self.webhook(scope, receive, send)
                return
            if self.hub is not None and (path.startswith(PREFIX) or path == ROOT_PATH):
                await self.hub(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def settle_heap() -> None:
    """Freeze what start-up built and collect young objects less often.

    Imports and the app leave a large heap that lives as long as the process; every full
    collection walked it again (bench/README.md, "Measured choices", has what it cost).
    Frozen, it is never scanned. Pushes mostly allocate objects freed by reference
    counting; the young generation is still collected every GC_THRESHOLD allocations, so
    the few cycles (an exception and its traceback, say) stay short-lived.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def _default_store(settings: Settings, metrics: Metrics, clock: Callable[[], float]) -> Store:
    if settings.redis_url is None:
        return MemoryStore(clock=clock)
    from wxhook.server.store.redis import RedisStore

    return RedisStore(settings.redis_url.get_secret_value(), metrics=metrics)


def create_app(settings: Settings, *, http: httpx.AsyncClient | None = None,
               store: Store | None = None, router: Router | None = None,
               profile_repo: ProfileRepo | None = None, metrics: Metrics | None = None,
               clock: Callable[[], float] = time.monotonic,
               wall_clock: Callable[[], float] = time.time) -> FastAPI:
    """Build the ASGI app for one account; `clock` is the monotonic clock of its TTL
    memories, `wall_clock` the epoch time of push timestamps, nonces and token expiry and
    back-off (tests pass virtual time for both). With WXHOOK_ACCOUNTS, the app of every
    account in that file (create_accounts_app)."""
    if settings.accounts:
        return create_accounts_app(settings, http=http, store=store, router=router,
                                   profile_repo=profile_repo, metrics=metrics, clock=clock,
                                   wall_clock=wall_clock)
    metrics = Metrics() if metrics is None else metrics
    own_http = http is None
    http = new_http_client(timeout=settings.http_timeout) if http is None else http
    store = _default_store(settings, metrics, clock) if store is None else store
    namespace = f"wxhook:{settings.app_id}:"
    api, tokens = api_with_tokens(http, settings, store=store, namespace=namespace,
                                  metrics=metrics, clock=wall_clock)
    # Profiles must survive a restart: Redis when shared, else an embedded SQLite file.
    own_repo = None if profile_repo is not None or store.shared else SqliteProfileRepo(
        settings.profile_db, appid=settings.app_id, sandbox_appid=SANDBOX_APP_ID)
    repo: ProfileRepo = (profile_repo if profile_repo is not None
                         else own_repo if own_repo is not None
                         else StoreProfileRepo(store, namespace=namespace))
    profiles = Profiles(api, repo, ttl=settings.profile_ttl, batch_window=settings.batch_window)
    delivery = LateDelivery(api, metrics=metrics)
    rules = (RulesSource(settings.rules, on_result=lambda r: metrics.rules_reloads.labels(r).inc(),
                         last_good=os.environ.get(LAST_GOOD_ENV))
             if settings.rules else None)
    if router is None:
        answerer = None if rules is None else RulesAnswerer(
            rules.current, store=store, namespace=namespace)
        router = default_router(settings.handlers, rules=answerer)
    webhook = Webhook(settings, store=store, router=router, api=api, profiles=profiles,
                      delivery=delivery, metrics=metrics, clock=clock, wall_clock=wall_clock)
    oauth = OAuth(settings, api=api, store=store, repo=repo, profiles=profiles,
                  namespace=namespace, metrics=metrics)
    readiness = Readiness(tokens=tokens, store=store, api=api, rules=rules, metrics=metrics)
    log = get_logger("wxhook")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("startup", **settings.summary(), pid=os.getpid())
        settle_heap()
        async with watching(rules), readiness.serving():
            yield
        # uvicorn has stopped accepting and finished in-flight pushes; now the late ones.
        left = await delivery.drain(SHUTDOWN_GRACE)
        log.info("shutdown", late_deliveries_abandoned=left)
        flush_logs()
        if own_http:
            await http.aclose()
        await store.aclose()
        if own_repo is not None:
            await own_repo.aclose()

    app = WxhookApp(title="wxhook", lifespan=lifespan, docs_url=None, redoc_url=None,
                    openapi_url=None)
    app.webhook = webhook
    app.router.routes.extend(oauth.routes())
    app.state.settings = settings
    app.state.api = api
    app.state.tokens = tokens
    app.state.store = store
    app.state.profiles = profiles
    app.state.oauth = oauth
    app.state.delivery = delivery
    app.state.webhook = webhook
    app.state.metrics = metrics
    app.state.rules = rules
    app.state.readiness = readiness

    _add_probes(app, readiness, metrics)
    mount_authority(app, settings.internal_key, single_account(tokens), metrics=metrics,
                    per_client=settings.internal_limit)
    return app


def create_accounts_app(settings: Settings, *, http: httpx.AsyncClient | None = None,
                        store: Store | None = None, router: Router | None = None,
                        profile_repo: ProfileRepo | None = None, metrics: Metrics | None = None,
                        clock: Callable[[], float] = time.monotonic,
                        wall_clock: Callable[[], float] = time.time) -> FastAPI:
    """The app of every account in WXHOOK_ACCOUNTS, each at /wechat/{name}; `router`, when
    given, answers for all of them (tests), else each account's handlers and rules do."""
    metrics = Metrics() if metrics is None else metrics
    # A bad file, rules file or handlers module: SettingsError, refuse to start (unless a
    # worker started again, with the last good copy to fall back on).
    source = AccountsSource(settings, metrics=metrics,
                            last_good=os.environ.get(ACCOUNTS_LAST_GOOD_ENV))
    store = _default_store(settings, metrics, clock) if store is None else store
    hub = source.hub = AccountHub(settings, source.accounts, store=store, metrics=metrics,
                                  http=http, router=router, profile_repo=profile_repo,
                                  clock=clock, wall_clock=wall_clock, sources=source.sources)
    readiness = Readiness(tokens=None, store=store, api=None, rules=None, metrics=metrics,
                          accounts=source, hub=hub)
    log = get_logger("wxhook")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("startup", **summary(settings, source.accounts), pid=os.getpid())
        settle_heap()
        async with watching_accounts(source), readiness.serving():
            yield
        left = await hub.aclose(SHUTDOWN_GRACE)
        log.info("shutdown", late_deliveries_abandoned=left)
        flush_logs()
        await store.aclose()

    app = WxhookApp(title="wxhook", lifespan=lifespan, docs_url=None, redoc_url=None,
                    openapi_url=None)
    app.hub = hub
    app.router.routes.extend(hub.oauth_routes())
    app.state.settings = settings
    app.state.store = store
    app.state.hub = hub
    app.state.accounts = source
    app.state.metrics = metrics
    app.state.readiness = readiness
    _add_probes(app, readiness, metrics)
    mount_authority(app, settings.internal_key, file_accounts(hub), metrics=metrics,
                    per_client=settings.internal_limit)
    return app


def _add_probes(app: FastAPI, readiness: Readiness, metrics: Metrics) -> None:
    """/healthz, /readyz and /metrics, the same with one account or many."""
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    app.router.add_route("/readyz", readiness.endpoint, methods=["GET", "HEAD"])

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        readiness.observe()  # this process's view of the shared dependencies, current
        if metrics.multiprocess:
            from wxhook.server.multiproc import exposition

            data = exposition(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        else:
            data = generate_latest(metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

