"""Profile lookups: coalesced per openid, batched per burst, degrading to None."""

import asyncio
import json
import time

import httpx

from wxhook.server.metrics import Metrics
from wxhook.server.profiles import Profiles, StoreProfileRepo
from wxhook.server.store.memory import MemoryStore
from wxhook.server.tokens import TokenManager
from wxhook.server.wechat_api import WeChatAPI, WeChatHTTP


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
    from wxhook.tools.sandbox import Fault
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
    from wxhook.tools.sandbox import Fault
    sandbox.add_fault(Fault(path="/cgi-bin/user/info/batchget", http_status=404))
    profiles, _ = build(upstream, settings)
    for burst in range(2):
        openids = [f"oNoBatch{burst}{i:019d}" for i in range(20)]
        names = await asyncio.gather(*(profiles.nickname(o) for o in openids))
        assert names == [f"Follower-{o[-6:]}" for o in openids]
    assert sandbox.calls["/cgi-bin/user/info/batchget"] == 1  # tried once, then not again
    assert sandbox.calls["/cgi-bin/user/info"] == 40


# -- batches in flight: an upstream that holds every lookup until the test lets it go ---------

class HeldUpstream:
    """A MockTransport WeChat API: tokens at once, each user/info call held until released."""

    def __init__(self, *, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing  # a batch holding one of these openids answers HTTP 500
        self.held: list[asyncio.Future[None]] = []
        self.sizes: list[int] = []  # openids a call, in the order the calls came
        self.token_requests = 0
        self.calls = 0
        self.at_once = 0
        self.most_at_once = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(("/stable_token", "/token")):
            self.token_requests += 1
            return httpx.Response(200, json={"access_token": "T" * 20, "expires_in": 7200})
        if request.url.path.endswith("/batchget"):
            openids = [u["openid"] for u in json.loads(request.content)["user_list"]]
        else:
            openids = [request.url.params["openid"]]
        self.calls += 1
        self.sizes.append(len(openids))
        gate = asyncio.get_running_loop().create_future()
        self.held.append(gate)
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            await gate
        finally:
            self.at_once -= 1
        if self.failing & set(openids):
            return httpx.Response(500)
        infos = [{"openid": o, "nickname": f"N-{o[-6:]}"} for o in openids]
        if len(openids) == 1 and not request.url.path.endswith("/batchget"):
            return httpx.Response(200, json=infos[0])
        return httpx.Response(200, json={"user_info_list": infos})

    def release(self, n: int | None = None) -> None:
        """Let the oldest n held calls (all by default) answer."""
        for gate in [g for g in self.held if not g.done()][:n]:
            gate.set_result(None)


async def until(cond, *, steps: int = 2000) -> None:
    """Run the loop until cond() holds (a bounded number of steps: no wall clock)."""
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def held_profiles(settings, held: HeldUpstream, **kw) -> Profiles:
    # A window of 0: the open batch closes once the calls already running have joined it,
    # at the loop's next step, so no test here depends on a timer's wall-clock time.
    kw.setdefault("batch_window", 0)
    http = httpx.AsyncClient(transport=httpx.MockTransport(held))
    return build(http, settings, **kw)[0]


def distinct(n: int, tag: str) -> list[str]:
    return [f"o{tag}{i:0{27 - len(tag)}d}" for i in range(n)]


async def test_a_full_batch_leaves_while_an_earlier_one_is_in_flight(settings):
    held = HeldUpstream()
    profiles = held_profiles(settings, held)
    openids = distinct(200, "Overlap")
    lookups = asyncio.gather(*(profiles.nickname(o) for o in openids))
    await until(lambda: len(held.held) == 2)
    assert held.at_once == 2  # the second batch went out before the first came back
    held.release()
    assert await lookups == [f"N-{o[-6:]}" for o in openids]
    assert held.token_requests == 1


async def test_batches_in_flight_are_bounded(settings):
    held = HeldUpstream()
    profiles = held_profiles(settings, held, max_batches_in_flight=2)
    openids = distinct(500, "Bound")
    lookups = asyncio.gather(*(profiles.nickname(o) for o in openids))
    await until(lambda: len(held.held) == 2)
    for _ in range(200):  # give a third batch every chance to leave
        await asyncio.sleep(0)
    assert len(held.held) == 2 and profiles.in_flight == 2
    for sent in (3, 4, 5):
        held.release(1)  # one answer frees one slot: the next batch leaves
        await until(lambda sent=sent: len(held.held) == sent)
    held.release()
    assert await lookups == [f"N-{o[-6:]}" for o in openids]
    assert held.most_at_once == 2 and held.calls == 5


async def test_a_failing_batch_answers_its_own_waiters_none_and_no_others(settings):
    openids = distinct(300, "Fail")
    held = HeldUpstream(failing=frozenset({openids[150]}))  # in the second batch
    profiles = held_profiles(settings, held)
    lookups = asyncio.gather(*(profiles.nickname(o) for o in openids))
    await until(lambda: len(held.held) == 3)
    held.release()
    names = await lookups
    assert names[100:200] == [None] * 100
    assert names[:100] + names[200:] == [f"N-{o[-6:]}" for o in openids[:100] + openids[200:]]
    # The failure is not cached: the next greeting asks again, and gets the name.
    held.failing = frozenset()
    again = asyncio.ensure_future(profiles.nickname(openids[150]))
    await until(lambda: len(held.held) == 4)
    held.release()
    assert await again == f"N-{openids[150][-6:]}"


async def test_a_thousand_distinct_subscribes_cost_one_token_and_few_calls(settings):
    held = HeldUpstream()
    profiles = held_profiles(settings, held)
    openids = distinct(1000, "Count")
    lookups = asyncio.gather(*(profiles.nickname(o) for o in openids))
    while not lookups.done():  # answer whatever is held, as a real upstream would
        held.release()
        await asyncio.sleep(0)
    assert await lookups == [f"N-{o[-6:]}" for o in openids]
    assert held.token_requests == 1
    assert held.calls <= 50


async def test_over_the_bound_the_open_batch_fills_up_instead_of_queueing_more_calls(settings):
    held = HeldUpstream()
    profiles = held_profiles(settings, held, max_batches_in_flight=1)
    first = asyncio.gather(*(profiles.nickname(o) for o in distinct(100, "Full")))
    await until(lambda: len(held.held) == 1)
    waves = []
    for wave in range(3):  # three windows close while the only slot is taken
        waves.append(asyncio.gather(*(profiles.nickname(o) for o in distinct(30, f"W{wave}"))))
        for _ in range(20):
            await asyncio.sleep(0)
    assert len(held.held) == 1
    held.release()
    await until(lambda: len(held.held) == 2)
    held.release()
    await first
    for wave in waves:
        assert all(name and name.startswith("N-") for name in await wave)
    assert held.sizes == [100, 90]  # the waiting batch took every later arrival: one call


async def test_a_waiter_short_of_time_does_not_sink_the_batch_of_others(settings):
    # The batch's call is bounded by its waiters' latest deadline: the first waiter's, with
    # 10 ms left, would leave "no time left" for the call and None for all six.
    held = HeldUpstream()
    profiles = held_profiles(settings, held)
    openids = distinct(6, "Late")
    now = time.monotonic()
    hurried = asyncio.ensure_future(profiles.nickname(openids[0], deadline=now + 0.01))
    others = asyncio.gather(*(profiles.nickname(o, deadline=now + 3) for o in openids[1:]))
    await until(lambda: len(held.held) == 1)
    assert await hurried is None  # it gave up on its own
    held.release()
    assert await others == [f"N-{o[-6:]}" for o in openids[1:]]
    assert held.calls == 1


async def test_a_waiter_giving_up_or_cancelled_leaves_the_shared_lookup_to_the_others(settings):
    held = HeldUpstream()
    profiles = held_profiles(settings, held)
    openid = distinct(1, "Shared")[0]
    hurried = asyncio.ensure_future(
        profiles.nickname(openid, deadline=time.monotonic() + 0.01))
    dropped = asyncio.ensure_future(profiles.nickname(openid))
    patient = asyncio.ensure_future(profiles.nickname(openid))
    await until(lambda: len(held.held) == 1)
    assert await hurried is None
    dropped.cancel()
    await asyncio.gather(dropped, return_exceptions=True)
    held.release()
    assert await patient == f"N-{openid[-6:]}"
    assert held.calls == 1
