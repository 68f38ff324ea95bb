"""Per-follower state (handlers.state, ctx.state()) through the real /wechat route: read
only when asked, written once after the handlers, compare-and-set between racing pushes,
bounded, with a TTL; shared by instances on one Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from structlog.testing import capture_logs

from handlers import Context, InboundMessage, Next, Reply, Router, TextMessage
from handlers.testing import HandlerClient
from service.config import SANDBOX_APP_ID
from service.store.memory import MemoryStore
from service.store.redis import RedisStore
from service.tools.simulate import decode_reply, push_xml, sign_push
from tests.support import TOKEN, sandbox_process, server_process

ALICE = "oAliceFollower00000000000001"
BOB = "oBobFollower0000000000000001"


def key(openid: str, appid: str = SANDBOX_APP_ID) -> str:
    return f"wxhook:{appid}:state:{openid}"


def conversation() -> Router:
    """The guide's two-step conversation: "order", then the number."""
    router = Router()

    @router.text(equal="order")
    async def ask(msg: TextMessage, ctx: Context) -> str:
        state = await ctx.state()
        state["step"] = "order_number"
        return "Send your order number."

    @router.text(regex=r"^#?(\d{4,12})$")
    async def number(msg: TextMessage, ctx: Context) -> str | None:
        state = await ctx.state()
        if state.get("step") != "order_number":
            return None
        del state["step"]
        assert ctx.match is not None
        return f"Looking up order {ctx.match[1]}."

    @router.text()
    async def other(msg: TextMessage, ctx: Context) -> str:
        return "Send 'order' to look up an order."

    return router


class RecordingStore(MemoryStore):
    """A MemoryStore that notes every operation on a state key."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ops: list[str] = []

    def _note(self, op: str, key: str) -> None:
        if ":state:" in key:
            self.ops.append(op)

    async def get(self, key: str) -> bytes | None:
        self._note("get", key)
        return await super().get(key)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        self._note("set_nx" if nx else "set", key)
        return await super().set(key, value, ttl=ttl, nx=nx)

    async def replace_if(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        self._note("replace_if", key)
        if await MemoryStore.get(self, key) != expected:  # (MemoryStore's would call set())
            return False
        return await MemoryStore.set(self, key, value, ttl=ttl)

    async def delete_if(self, key: str, expected: bytes) -> bool:
        self._note("delete_if", key)
        return await super().delete_if(key, expected)


async def test_a_two_step_conversation_per_follower() -> None:
    store = MemoryStore()
    for aes in (False, True):
        async with HandlerClient(conversation(), aes=aes, store=store) as wx:
            assert (await wx.text("12345", openid=ALICE))["Content"] == (
                "Send 'order' to look up an order.")
            assert (await wx.text("order", openid=ALICE))["Content"] == "Send your order number."
            # Bob's state is his own: Alice's step does not answer him.
            assert (await wx.text("12345", openid=BOB))["Content"] == (
                "Send 'order' to look up an order.")
            assert (await wx.text("#12345", openid=ALICE))["Content"] == (
                "Looking up order 12345.")
            # The step was used up: the same number again is not an order number.
            assert (await wx.text("12345", openid=ALICE))["Content"] == (
                "Send 'order' to look up an order.")
    assert await store.get(key(ALICE)) is None  # emptied: the key is gone


async def test_state_is_read_only_when_asked_and_written_once_when_changed() -> None:
    router = Router()

    @router.middleware
    async def peeks(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        if isinstance(msg, TextMessage) and msg.content.startswith("count"):
            (await ctx.state()).setdefault("seen_by_middleware", True)
        return await call_next(msg, ctx)

    @router.text(equal="untouched")
    async def untouched(msg: TextMessage, ctx: Context) -> str:
        return "no state"

    @router.text(equal="read")
    async def read(msg: TextMessage, ctx: Context) -> str:
        return f"n={(await ctx.state()).get('n', 0)}"

    @router.text(regex="^count")
    async def count(msg: TextMessage, ctx: Context) -> str:
        state = await ctx.state()
        state["n"] = state.get("n", 0) + 1
        state["n"] = state["n"]   # written once however often it is changed
        return f"n={state['n']}"

    @router.text(equal="forget")
    async def forget(msg: TextMessage, ctx: Context) -> str:
        (await ctx.state()).clear()
        return "forgotten"

    store = RecordingStore()
    async with HandlerClient(router, store=store) as wx:
        assert (await wx.text("untouched"))["Content"] == "no state"
        assert store.ops == []  # the hot path: no state, no store call
        assert (await wx.text("read"))["Content"] == "n=0"
        assert store.ops == ["get"]  # read, unchanged: nothing written
        assert (await wx.text("count"))["Content"] == "n=1"
        assert store.ops == ["get", "get", "set_nx"]  # middleware and handler: one read
        assert (await wx.text("count"))["Content"] == "n=2"
        assert store.ops[3:] == ["get", "replace_if"]
        assert (await wx.text("forget"))["Content"] == "forgotten"
        assert store.ops[5:] == ["get", "delete_if"]
        assert await store.get(key("oSandboxDemoFollower00000001")) is None


async def test_two_racing_pushes_of_one_follower_first_save_wins() -> None:
    router = Router()
    both_read = asyncio.Event()
    release_second = asyncio.Event()
    readers: list[str] = []

    @router.text()
    async def note(msg: TextMessage, ctx: Context) -> str:
        state = await ctx.state()
        readers.append(msg.content)
        if len(readers) == 2:
            both_read.set()
        await both_read.wait()
        if msg.content == "second":
            await release_second.wait()
        state["last"] = msg.content
        state[msg.content] = True
        return f"noted {msg.content}"

    store = MemoryStore()
    with capture_logs() as logs:
        async with HandlerClient(router, store=store) as wx:
            first = asyncio.ensure_future(wx.text("first", openid=ALICE))
            second = asyncio.ensure_future(wx.text("second", openid=ALICE))
            assert (await first)["Content"] == "noted first"  # saved before it answered
            release_second.set()
            assert (await second)["Content"] == "noted second"  # its reply still goes out
    stored = await store.get(key(ALICE))
    assert stored is not None and json.loads(stored) == {"last": "first", "first": True}
    conflicts = [line for line in logs if line["event"] == "state_conflict"]
    assert len(conflicts) == 1 and conflicts[0]["openid"] == "oAli***0001"
    assert conflicts[0]["handler"].endswith("note")


@pytest.mark.parametrize(("value", "event"), [
    ("x" * 5000, "state_too_large"),
    ({"a", "set"}, "state_not_json"),
    (float("nan"), "state_not_json"),
    (b"bytes", "state_not_json"),
])
async def test_a_state_that_cannot_be_kept_is_refused_and_logged(value: object,
                                                                event: str) -> None:
    router = Router()

    @router.text(equal="small")
    async def small(msg: TextMessage, ctx: Context) -> str:
        (await ctx.state())["v"] = "small"
        return "kept"

    @router.text(equal="big")
    async def big(msg: TextMessage, ctx: Context) -> str:
        (await ctx.state())["v"] = value
        return "answered anyway"

    store = MemoryStore()
    with capture_logs() as logs:
        async with HandlerClient(router, store=store) as wx:
            assert (await wx.text("small"))["Content"] == "kept"
            assert (await wx.text("big"))["Content"] == "answered anyway"
    refused = [line for line in logs if line["event"] == event]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"
    assert json.loads(await store.get(key("oSandboxDemoFollower00000001")) or b"") == {
        "v": "small"}  # the previous state stays


async def test_exactly_the_limit_is_kept() -> None:
    from handlers.state import STATE_LIMIT

    router = Router()
    overhead = len('{"v":""}')

    @router.text()
    async def fill(msg: TextMessage, ctx: Context) -> str:
        (await ctx.state())["v"] = "x" * (STATE_LIMIT - overhead + int(msg.content))
        return "ok"

    store = MemoryStore()
    async with HandlerClient(router, store=store) as wx:
        await wx.text("0")
        assert len(await store.get(key("oSandboxDemoFollower00000001")) or b"") == STATE_LIMIT
        await wx.text("1")
        assert len(await store.get(key("oSandboxDemoFollower00000001")) or b"") == STATE_LIMIT


async def test_a_failed_handler_saves_nothing() -> None:
    router = Router()

    @router.text()
    async def fails(msg: TextMessage, ctx: Context) -> str:
        (await ctx.state())["half"] = "done"
        raise RuntimeError("after changing the state")

    store = MemoryStore()
    async with HandlerClient(router, store=store) as wx:
        assert await wx.text("x") == {}
    assert await store.get(key("oSandboxDemoFollower00000001")) is None


async def test_state_expires_its_ttl_after_the_last_change() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    async with HandlerClient(conversation(), store=store, WXHOOK_STATE_TTL=600) as wx:
        await wx.text("order", openid=ALICE)
        now[0] += 599
        assert (await wx.text("1234", openid=ALICE))["Content"] == "Looking up order 1234."
        await wx.text("order", openid=ALICE)
        now[0] += 601
        assert (await wx.text("1234", openid=ALICE))["Content"] == (
            "Send 'order' to look up an order.")


async def test_an_unreadable_stored_state_starts_over() -> None:
    store = MemoryStore()
    await store.set(key(ALICE), b"\xff not json", ttl=60)
    with capture_logs() as logs:
        async with HandlerClient(conversation(), store=store) as wx:
            assert (await wx.text("order", openid=ALICE))["Content"] == (
                "Send your order number.")
    assert json.loads(await store.get(key(ALICE)) or b"") == {"step": "order_number"}
    assert [line["event"] for line in logs if line["event"].startswith("state_")] == [
        "state_unreadable"]


async def test_state_is_per_account() -> None:
    store = MemoryStore()
    async with HandlerClient(conversation(), store=store) as one, \
            HandlerClient(conversation(), store=store, WECHAT_APP_ID="wx00000000another") as two:
        await one.text("order", openid=ALICE)
        assert (await two.text("1234", openid=ALICE))["Content"] == (
            "Send 'order' to look up an order.")
        assert (await one.text("1234", openid=ALICE))["Content"] == "Looking up order 1234."


async def test_a_late_handler_saves_its_state_before_the_late_reply() -> None:
    router = Router()

    @router.text(equal="slow")
    async def slow(msg: TextMessage, ctx: Context) -> str:
        await asyncio.sleep(ctx.remaining() + 0.2)  # past the deadline
        (await ctx.state())["slow"] = "done"
        return "late answer"

    @router.text(equal="check")
    async def check(msg: TextMessage, ctx: Context) -> str:
        return str((await ctx.state()).get("slow"))

    async with HandlerClient(router, WXHOOK_DEADLINE=0.3) as wx:
        assert await wx.text("slow") == {}  # "success" at the deadline
        for _ in range(100):
            if wx.sent:
                break
            await asyncio.sleep(0.05)
        assert [m["text"]["content"] for m in wx.sent] == ["late answer"]
        assert (await wx.text("check"))["Content"] == "done"


def test_context_without_a_store_says_so() -> None:
    ctx = Context(deadline=0, profiles=None, api=None, settings=None, log=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no state store"):
        asyncio.run(ctx.state())


# -- Redis: every instance sees the same state -------------------------------------------------


@pytest.mark.redis
async def test_two_instances_on_one_redis_share_the_conversation(redis_url: str) -> None:
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    try:
        async with HandlerClient(conversation(), store=a, WXHOOK_STATE_TTL=120) as one, \
                HandlerClient(conversation(), store=b, WXHOOK_STATE_TTL=120) as two:
            assert (await one.text("order", openid=ALICE))["Content"] == (
                "Send your order number.")
            ttl = redis.Redis.from_url(redis_url).pttl(key(ALICE))
            assert 0 < ttl <= 120_000
            assert (await two.text("1234", openid=BOB))["Content"] == (
                "Send 'order' to look up an order.")
            assert (await two.text("1234", openid=ALICE))["Content"] == (
                "Looking up order 1234.")
            assert (await one.text("1234", openid=ALICE))["Content"] == (
                "Send 'order' to look up an order.")
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis
async def test_racing_instances_on_redis_keep_the_first_save(redis_url: str) -> None:
    both_read = asyncio.Event()
    release_second = asyncio.Event()
    readers: list[str] = []

    def noting() -> Router:
        router = Router()

        @router.text()
        async def note(msg: TextMessage, ctx: Context) -> str:
            state = await ctx.state()
            readers.append(msg.content)
            if len(readers) == 2:
                both_read.set()
            await both_read.wait()
            if msg.content == "second":
                await release_second.wait()
            state["last"] = msg.content
            return "ok"

        return router

    a, b = RedisStore(redis_url), RedisStore(redis_url)
    try:
        await a.set(key(ALICE), b'{"last":"zero"}', ttl=60)
        with capture_logs() as logs:
            async with HandlerClient(noting(), store=a) as one, \
                    HandlerClient(noting(), store=b) as two:
                first = asyncio.ensure_future(one.text("first", openid=ALICE))
                second = asyncio.ensure_future(two.text("second", openid=ALICE))
                await first
                release_second.set()
                await second
        assert json.loads(await a.get(key(ALICE)) or b"") == {"last": "first"}
        assert [line["event"] for line in logs if line["event"] == "state_conflict"] == [
            "state_conflict"]
    finally:
        await a.aclose()
        await b.aclose()


HANDLERS = '''
from handlers import Context, Router, TextMessage

router = Router()


@router.text(equal="order")
async def ask(msg: TextMessage, ctx: Context) -> str:
    (await ctx.state())["step"] = "order_number"
    return "Send your order number."


@router.text(regex=r"^(\\d+)$")
async def number(msg: TextMessage, ctx: Context) -> str | None:
    state = await ctx.state()
    if state.pop("step", None) != "order_number":
        return None
    assert ctx.match is not None
    return f"Looking up order {ctx.match[1]}."
'''


@pytest.mark.slow
@pytest.mark.redis
def test_two_served_processes_on_one_redis_share_state(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "handlers_pkg").mkdir()
    (tmp_path / "handlers_pkg" / "__init__.py").write_text("")
    (tmp_path / "handlers_pkg" / "conversation.py").write_text(HANDLERS)
    spec = "handlers_pkg.conversation:router"

    def say(base: str, text: str) -> str:
        push = sign_push(push_xml("text", openid=ALICE, text=text), token=TOKEN, openid=ALICE)
        r = httpx.post(base + "/wechat", params=push.params, content=push.body, timeout=10)
        return decode_reply(r.content, crypto=None).get("Content", "")

    with sandbox_process() as api, \
            server_process(api, cwd=tmp_path, REDIS_URL=redis_url, WXHOOK_HANDLERS=spec) as a, \
            server_process(api, cwd=tmp_path, REDIS_URL=redis_url, WXHOOK_HANDLERS=spec) as b:
        assert say(a, "order") == "Send your order number."
        assert say(b, "4242") == "Looking up order 4242."
        assert say(a, "4242") == ""  # the step was used up, on the other instance
