"""The access token manager: single-flight, ahead-of-expiry refresh, compare-and-expire."""

import asyncio
import json

import httpx
import pytest

from wxhook.errors import ConfigurationError, UpstreamUnavailable
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.tokens import TokenManager


class Upstream:
    """A token endpoint with a call counter, answering from a script."""

    def __init__(self, answers=None, delay=0.0):
        self.calls = 0
        self.answers = answers or []
        self.delay = delay

    async def fetch(self):
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.answers:
            a = self.answers.pop(0)
            if isinstance(a, Exception):
                raise a
            return a
        return f"token-{self.calls}", 7200


def manager(up, *, clock=None, store=None, **kw):
    return TokenManager(store or MemoryStore(), up.fetch, namespace="t:", metrics=Metrics(),
                        clock=clock or (lambda: 1_000_000.0), **kw)


async def test_forty_concurrent_cold_gets_cause_one_fetch():
    up = Upstream(delay=0.05)
    tm = manager(up)
    tokens = await asyncio.gather(*(tm.get() for _ in range(40)))
    assert set(tokens) == {"token-1"} and up.calls == 1


async def test_refreshes_ahead_of_expiry_without_making_callers_wait():
    now = [1_000_000.0]
    up = Upstream()
    tm = manager(up, clock=lambda: now[0])
    assert await tm.get() == "token-1"
    now[0] += 7200 - 200  # inside the refresh-ahead window, still valid
    assert await tm.get() == "token-1"  # served at once...
    await asyncio.sleep(0.01)
    assert up.calls == 2 and await tm.get() == "token-2"  # ...while the refresh ran behind


async def test_expired_token_is_not_served():
    now = [1_000_000.0]
    up = Upstream()
    tm = manager(up, clock=lambda: now[0])
    await tm.get()
    now[0] += 7200
    assert await tm.get() == "token-2"


async def test_invalidate_expires_only_the_token_that_failed():
    up = Upstream()
    tm = manager(up)
    first = await tm.get()
    await tm.invalidate(first)
    second = await tm.get()
    assert second == "token-2" and up.calls == 2
    await tm.invalidate(first)  # a late 40001 for the old token must not kill the new one
    assert await tm.get() == second and up.calls == 2


async def test_store_keeps_the_token_for_peers():
    store = MemoryStore()
    up_a, up_b = Upstream(), Upstream()
    a = manager(up_a, store=store)
    b = manager(up_b, store=store)
    assert await a.get() == await b.get() == "token-1"
    assert (up_a.calls, up_b.calls) == (1, 0)


async def test_configuration_error_backs_off_instead_of_storming():
    err = ConfigurationError(40125, "invalid appsecret", api="stable_token")
    up = Upstream(answers=[err])
    tm = manager(up)
    for _ in range(20):
        with pytest.raises(ConfigurationError):
            await tm.get()
    assert up.calls == 1
    status = tm.status()
    assert status["cached"] is False and status["error"]["errcode"] == 40125
    assert "WECHAT_APP_SECRET" in status["fix"]


async def test_transient_failure_retries_after_a_short_backoff():
    up = Upstream(answers=[UpstreamUnavailable(None, "HTTP 500", api="token")])
    now = [1_000_000.0]
    tm = manager(up, failure_backoff=0.05, clock=lambda: now[0])
    with pytest.raises(UpstreamUnavailable):
        await tm.get()
    now[0] += 0.04
    with pytest.raises(UpstreamUnavailable):  # no retry storm: the back-off holds
        await tm.get()
    assert up.calls == 1
    now[0] += 0.02
    assert await tm.get() == "token-2"


async def test_deadline_bounds_the_wait():
    import time
    up = Upstream(delay=1.0)
    tm = manager(up)
    with pytest.raises(UpstreamUnavailable):
        await tm.get(deadline=time.monotonic() + 0.05)


async def test_stable_token_request_shape(settings):
    from wxhook.server.wechat_api import WeChatHTTP

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "ACCESS", "expires_in": 7200})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        api = WeChatHTTP(http, settings, metrics=Metrics())
        assert await api.fetch_token() == ("ACCESS", 7200)
    req = seen[0]
    assert req.method == "POST" and req.url.path == "/cgi-bin/stable_token"
    body = json.loads(req.content)
    assert body == {"grant_type": "client_credential", "appid": settings.app_id,
                    "secret": settings.app_secret.get_secret_value(), "force_refresh": False}


async def test_an_api_without_stable_token_falls_back_to_the_classic_endpoint(settings):
    from wxhook.server.wechat_api import WeChatHTTP

    paths = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/cgi-bin/stable_token":
            return httpx.Response(404, text="not found")
        return httpx.Response(200, json={"access_token": "CLASSIC", "expires_in": 7200})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        api = WeChatHTTP(http, settings, metrics=Metrics())
        assert await api.fetch_token() == ("CLASSIC", 7200)
        assert await api.fetch_token() == ("CLASSIC", 7200)
    assert paths == ["/cgi-bin/stable_token", "/cgi-bin/token", "/cgi-bin/token"]


async def test_stable_token_errors_other_than_404_are_not_papered_over(settings):
    from wxhook.errors import UpstreamUnavailable
    from wxhook.server.wechat_api import WeChatHTTP

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="busy")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        api = WeChatHTTP(http, settings, metrics=Metrics())
        with pytest.raises(UpstreamUnavailable):
            await api.fetch_token()


@pytest.mark.parametrize("failure", ["closed", "transport"])
async def test_a_client_that_cannot_send_is_upstream_unavailable(settings, failure):
    from wxhook.server.wechat_api import NotSent, WeChatHTTP

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed the connection", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    if failure == "closed":  # a reload or shutdown closed it under the call
        await http.aclose()
    try:
        api = WeChatHTTP(http, settings, metrics=Metrics())
        with pytest.raises(UpstreamUnavailable) as caught:
            await api.fetch_token()
        assert isinstance(caught.value, NotSent) is (failure == "closed")
        tm = TokenManager(MemoryStore(), api.fetch_token, namespace="t:", metrics=Metrics())
        with pytest.raises(UpstreamUnavailable):  # the manager's callers see the same
            await tm.get()
    finally:
        await http.aclose()


async def test_a_token_rejected_right_after_a_refresh_backs_off_and_the_pause_doubles():
    from wxhook.errors import TokenInvalid

    now = [1_000_000.0]
    up = Upstream()
    tm = manager(up, clock=lambda: now[0], reject_backoff=0.2)
    first = await tm.get()
    now[0] += 3600  # an hour-old token dies: refresh at once
    assert await tm.invalidate(first)
    second = await tm.get()
    assert await tm.invalidate(second) is False  # its successor is rejected at once: pause
    with pytest.raises(TokenInvalid):
        await tm.get()
    assert up.calls == 2 and tm.status()["retry_in_s"] == 0.2
    now[0] += 0.1
    with pytest.raises(TokenInvalid):  # still inside the pause, on the manager's clock
        await tm.get()
    now[0] += 0.11
    third = await tm.get()
    assert up.calls == 3
    assert await tm.invalidate(third) is False
    assert tm.status()["retry_in_s"] == 0.4  # doubled
    now[0] += 0.41
    fourth = await tm.get()
    now[0] += 120  # this one lived past the window: its death is an ordinary one
    assert await tm.invalidate(fourth)
    assert await tm.get() == "token-5"


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.redis),
                                  pytest.param("cluster", marks=pytest.mark.redis)])
async def test_a_rejection_counted_by_one_manager_pauses_the_others(kind, request):
    # Two instances of one account, one store: the run of rejections and the pause are
    # the deployment's, not each process's.
    from redis.crc import key_slot

    from wxhook.errors import TokenInvalid
    from wxhook.server.store.redis import RedisStore

    now = [1_000_000.0]
    store = MemoryStore() if kind == "memory" else RedisStore(
        request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url"))
    keys = set()

    class Noting:  # the store, noting each key it is asked about
        shared = store.shared

        def __getattr__(self, name):
            async def noted(key, *args, **kwargs):
                keys.add(key)
                return await getattr(store, name)(key, *args, **kwargs)
            return noted
    try:
        up = Upstream()
        a, b = (TokenManager(Noting(), up.fetch, namespace="wxhook:wxapp:", metrics=Metrics(),
                             clock=lambda: now[0]) for _ in range(2))
        first = await a.get()
        assert await a.invalidate(first)  # rejected once: refreshed at once
        second = await a.get()
        assert await b.get() == second and up.calls == 2
        now[0] += 5  # rejected again at once, seen at B first: the run is 2, pause
        assert await b.invalidate(second) is False
        # A sees it fail too (a call in flight with it): the pause is A's as well.
        assert await a.invalidate(second) is False
        for manager in (a, b):
            with pytest.raises(TokenInvalid):
                await manager.get()
            assert manager.status()["retry_in_s"] == 30
        assert up.calls == 2
        # The token, its lock and the run: one slot of a cluster, the run stored there.
        assert len(keys) == 3 and len({key_slot(k.encode()) for k in keys}) == 1, keys
        (run,) = [k for k in keys if k.endswith(":rejected")]
        assert (await store.get(run)).startswith(b"2|")
        now[0] += 31
        third = await b.get()
        assert await a.get() == third and up.calls == 3
    finally:
        await store.aclose()
