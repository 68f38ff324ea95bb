"""Profile lookups: coalesced per openid, batched per burst, degrading to None."""

import asyncio

from service.observability import Metrics
from service.profiles import Profiles, StoreProfileRepo
from service.store.memory import MemoryStore
from service.tokens import TokenManager
from service.wechat_api import WeChatAPI, WeChatHTTP


def build(upstream, settings, **kw):
    metrics, store = Metrics(), MemoryStore()
    tokens = TokenManager(store, WeChatHTTP(upstream, settings, metrics=metrics).fetch_token,
                          namespace="p:", metrics=metrics)
    api = WeChatAPI(upstream, settings, metrics=metrics, tokens=tokens)
    repo = StoreProfileRepo(store, namespace="p:")
    return Profiles(api, repo, **kw), repo


async def test_same_openid_concurrently_is_one_call(upstream, settings, sandbox):
    sandbox.latency = 0.05
    profiles, _ = build(upstream, settings)
    names = await asyncio.gather(*(profiles.nickname("oSameOpenid00000000000000001")
                                   for _ in range(20)))
    assert set(names) == {"Follower-000001"}
    assert sandbox.calls["/cgi-bin/user/info"] + sandbox.calls["/cgi-bin/user/info/batchget"] == 1


async def test_a_burst_of_distinct_openids_is_batched(upstream, settings, sandbox):
    profiles, _ = build(upstream, settings)
    openids = [f"oBurst{i:022d}" for i in range(1000)]
    names = await asyncio.gather(*(profiles.nickname(o) for o in openids))
    assert names == [f"Follower-{o[-6:]}" for o in openids]
    assert sandbox.calls["/cgi-bin/user/info/batchget"] <= 50
    assert sandbox.calls["/cgi-bin/user/info/batchget"] + sandbox.calls["/cgi-bin/user/info"] <= 50


async def test_one_bad_openid_does_not_sink_its_batch(upstream, settings, sandbox):
    profiles, _ = build(upstream, settings)
    names = await asyncio.gather(profiles.nickname("oGoodOne00000000000000000001"),
                                 profiles.nickname("bad!"))
    assert names == ["Follower-000001", None]


async def test_cached_within_ttl(upstream, settings, sandbox):
    profiles, _ = build(upstream, settings)
    await profiles.nickname("oCached000000000000000000001")
    await profiles.nickname("oCached000000000000000000001")
    assert sandbox.calls["/cgi-bin/user/info"] == 1


async def test_empty_user_info_falls_back_to_the_oauth_profile(upstream, settings, sandbox):
    sandbox.empty_nicknames = True
    profiles, repo = build(upstream, settings)
    openid = "oOauthFollower00000000000001"
    assert await profiles.nickname(openid) is None
    await repo.put(openid, {"nickname": "小明"})
    assert await profiles.nickname(openid) == "小明"


async def test_upstream_failure_degrades_to_none(upstream, settings, sandbox):
    from service.sandbox import Fault
    sandbox.add_fault(Fault(path="*", http_status=500))
    profiles, _ = build(upstream, settings)
    assert await profiles.nickname("oFailing000000000000000000001") is None


async def test_an_empty_nickname_is_cached_too(upstream, settings, sandbox):
    sandbox.empty_nicknames = True  # what user/info answers everyone since 2021-12-27
    profiles, _ = build(upstream, settings)
    for _ in range(5):
        assert await profiles.nickname("oEmptyName000000000000000001") is None
    assert sandbox.calls["/cgi-bin/user/info"] == 1


async def test_an_api_without_batchget_still_greets_by_name(upstream, settings, sandbox):
    from service.sandbox import Fault
    sandbox.add_fault(Fault(path="/cgi-bin/user/info/batchget", http_status=404))
    profiles, _ = build(upstream, settings)
    for burst in range(2):
        openids = [f"oNoBatch{burst}{i:019d}" for i in range(20)]
        names = await asyncio.gather(*(profiles.nickname(o) for o in openids))
        assert names == [f"Follower-{o[-6:]}" for o in openids]
    assert sandbox.calls["/cgi-bin/user/info/batchget"] == 1  # tried once, then not again
    assert sandbox.calls["/cgi-bin/user/info"] == 40
