"""Fixtures only: settings, the in-process sandbox, an app wired to it, push builders."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import settings

from tests.redis_nodes import Cluster, redis_cluster
from tests.support import AES_KEY, SANDBOX_APP_ID, SANDBOX_SECRET, TOKEN, redis_server
from wxhook.server.app import create_app
from wxhook.server.config import Settings, load_settings
from wxhook.server.crypto import MessageCrypto
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.store.sqlite import SqliteProfileRepo
from wxhook.tools.sandbox import SandboxState, create_sandbox
from wxhook.tools.simulate import Push, push_xml, sign_push

OPENID = "oSandboxDemoFollower00000001"   # the sandbox's demo follower, "刺猬宝宝"

# Property tests draw the same examples every run: a suite that fails one run in N blocks good
# work at random. `make fuzz` (HYPOTHESIS_PROFILE=fuzz) explores new ones, many more of them
# (tests/support.py: examples()).
settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    # A developer's .env or exported WECHAT_* must not leak into tests. (WXHOOK_REQUIRE_REDIS
    # is the suite's own switch, read when a test starts a redis-server: it stays.)
    for key in list(os.environ):
        if key == "WXHOOK_REQUIRE_REDIS":
            continue
        if key.startswith(("WECHAT_", "WXHOOK_", "PROMETHEUS_MULTIPROC")) or key in (
                "REDIS_URL", "PUBLIC_BASE_URL", "SESSION_SECRET"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def profile_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SqliteProfileRepo]]:
    """Every SqliteProfileRepo the test made, closed after it if the test did not."""
    # An app closes its profile file in its lifespan; most tests drive an app without one.
    # An unclosed aiosqlite connection warns when dropped (an error here), and its thread
    # then keeps pytest from exiting. Held here, none is dropped before it is closed.
    opened: list[SqliteProfileRepo] = []
    init = SqliteProfileRepo.__init__

    def recorded(self: SqliteProfileRepo, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        opened.append(self)

    monkeypatch.setattr(SqliteProfileRepo, "__init__", recorded)
    yield opened
    for repo in opened:
        if repo._conn is not None:
            asyncio.run(repo.aclose())


@pytest.fixture
def sandbox_app() -> Any:
    """The stand-in WeChat API, in process."""
    return create_sandbox(appid=SANDBOX_APP_ID, secret=SANDBOX_SECRET)


@pytest.fixture
def sandbox(sandbox_app: Any) -> SandboxState:
    """The sandbox's state: counters, faults, users."""
    state: SandboxState = sandbox_app.state.sandbox
    return state


@pytest.fixture
async def upstream(sandbox_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client whose requests go to the in-process sandbox."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox_app)) as client:
        yield client


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Settings for the sandbox account; keyword overrides use the env names."""
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "WECHAT_APP_ID": SANDBOX_APP_ID, "WECHAT_APP_SECRET": SANDBOX_SECRET,
            "WECHAT_TOKEN": TOKEN, "WECHAT_ENCODING_AES_KEY": AES_KEY,
            "WECHAT_API_BASE": "http://sandbox", "WECHAT_OAUTH_BASE": "http://sandbox",
            "PUBLIC_BASE_URL": "http://testserver", "SESSION_SECRET": "test-session-secret-x" * 2,
        }
        base.update(overrides)
        return load_settings(_env_file=None, **base)
    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default test settings (safe mode available, sandbox credentials)."""
    return make_settings()


@pytest.fixture
def make_app(upstream: httpx.AsyncClient, settings: Settings) -> Callable[..., FastAPI]:
    """Build an app wired to the sandbox; pass settings/store/router to override."""
    def make(**kw: Any) -> FastAPI:
        kw.setdefault("http", upstream)
        kw.setdefault("store", MemoryStore())
        kw.setdefault("metrics", Metrics())
        return create_app(kw.pop("settings", settings), **kw)
    return make


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    """The default app."""
    return make_app()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in process."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as c:
        yield c


@pytest.fixture
def crypto(settings: Settings) -> MessageCrypto:
    """The account's crypto (what WeChat would use to encrypt pushes)."""
    return MessageCrypto(TOKEN, settings.aes_keys, settings.app_id)


@pytest.fixture
def make_push(crypto: MessageCrypto) -> Callable[..., Push]:
    """make_push("subscribe", openid=..., aes=False, **push_xml options) -> signed Push."""
    def make(kind: str, *, openid: str = OPENID, aes: bool = False, **kw: Any) -> Push:
        sign_kw = {k: kw.pop(k) for k in ("timestamp", "nonce") if k in kw}
        xml = kw.pop("xml", None) or push_xml(kind, openid=openid, **kw)
        return sign_push(xml, token=TOKEN, openid=openid, crypto=crypto if aes else None,
                         **sign_kw)
    return make


@pytest.fixture(scope="session")
def _suite_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server of the suite's own, on a free port, for the whole run."""
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield f"redis://127.0.0.1:{srv.port}/0"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real Redis, flushed before and after the test: the suite's own redis-server
    (skipped, or failed under WXHOOK_REQUIRE_REDIS=1, when redis-server is missing)."""
    import redis

    url: str = request.getfixturevalue("_suite_redis")
    r = redis.Redis.from_url(url)
    r.flushdb()
    yield url
    r.flushdb()
    r.close()


@pytest.fixture(scope="session")
def _suite_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One Redis Cluster of the suite's own (three masters, a replica each) for the tests
    that leave it whole; a test that fails a master over starts its own."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """REDIS_URL of the suite's cluster, every master flushed before and after the test
    (skipped, or failed under WXHOOK_REQUIRE_REDIS=1, when redis-server is missing)."""
    import redis

    cluster: Cluster = request.getfixturevalue("_suite_cluster")

    def flush() -> None:
        for node in cluster.masters():
            with redis.Redis(port=node.port) as r:
                r.flushall()

    flush()
    yield cluster.url
    flush()
