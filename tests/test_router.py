"""Router: decorators and register() share one path; first non-None reply wins."""

import asyncio
import time

import pytest

from tests.virtual_time import run_virtual
from wxhook.greeting import greeting_text
from wxhook.replies import TextReply
from wxhook.router import Context, Router
from wxhook.server.xmldoc import parse_message


def msg(body: str):
    return parse_message(("<xml><ToUserName>gh</ToUserName><FromUserName>oA</FromUserName>"
                          "<CreateTime>1</CreateTime>" + body + "</xml>").encode())


def ctx():
    return Context(deadline=time.monotonic() + 4, profiles=None, api=None, settings=None, log=None)


async def test_first_non_none_wins_in_registration_order():
    r = Router()
    seen = []

    @r.message("text")
    async def silent(m, c):
        seen.append("silent")

    async def answers(m, c):
        seen.append("answers")
        return TextReply("a")

    r.register(answers, msg_types=("text",))

    @r.message("text")
    async def never(m, c):
        seen.append("never")
        return TextReply("b")

    c = ctx()
    reply = await r.dispatch(msg("<MsgType>text</MsgType><Content>x</Content><MsgId>1</MsgId>"), c)
    assert reply == TextReply("a") and seen == ["silent", "answers"]
    assert c.handler.endswith("answers")


async def test_events_match_case_insensitively_and_by_predicate():
    r = Router()

    @r.event("scan")
    async def scan(m, c):
        return TextReply("scan")

    @r.event("CLICK", match=lambda m: m.event_key == "K1")
    async def k1(m, c):
        return TextReply("k1")

    assert await r.dispatch(msg("<MsgType>event</MsgType><Event>SCAN</Event>"), ctx()) == \
        TextReply("scan")
    assert await r.dispatch(msg("<MsgType>event</MsgType><Event>CLICK</Event>"
                                "<EventKey>K1</EventKey>"), ctx()) == TextReply("k1")
    assert await r.dispatch(msg("<MsgType>event</MsgType><Event>CLICK</Event>"
                                "<EventKey>K2</EventKey>"), ctx()) is None
    # an event route never sees a text message
    assert await r.dispatch(msg("<MsgType>text</MsgType><Content>SCAN</Content>"), ctx()) is None


async def test_include_appends_routes():
    a, b = Router(), Router()

    @b.message()
    async def any_message(m, c):
        return TextReply("b")

    a.include(b)
    assert await a.dispatch(msg("<MsgType>image</MsgType><MsgId>1</MsgId>"), ctx()) == \
        TextReply("b")


def test_greeting_never_renders_an_empty_or_none_name():
    kw = {"template": "Welcome, {nickname}!", "anonymous": "Welcome!"}
    assert greeting_text("刺猬宝宝", **kw) == "Welcome, 刺猬宝宝!"
    for blank in (None, "", "   "):
        assert greeting_text(blank, **kw) == "Welcome!"


def test_within_gives_the_default_when_time_runs_out():
    async def slow():
        await asyncio.sleep(5)
        return "late"

    async def main() -> None:
        c = Context(deadline=time.monotonic() + 0.3, profiles=None, api=None, settings=None,
                    log=None)
        assert await c.within(slow(), "default") == "default"
        # Given up when only the reply's margin (0.25 s) was left, not at the deadline.
        assert asyncio.get_running_loop().time() == pytest.approx(0.05, abs=0.01)

    run_virtual(main)


def _text(content):
    return msg(f"<MsgType>text</MsgType><Content>{content}</Content><MsgId>7</MsgId>")


def _event(name, key=""):
    return msg(f"<MsgType>event</MsgType><Event>{name}</Event><EventKey>{key}</EventKey>")


async def test_text_decorator_equal_contain_regex():
    r = Router()

    @r.text(equal=["hours", "营业时间"])
    async def eq(m, c):
        return TextReply(f"eq:{m.content}")

    @r.text(contain="open")
    async def co(m, c):
        return TextReply("co")

    @r.text(regex=r"^order\s+\d+$")
    async def rx(m, c):
        return TextReply("rx")

    async def answer(m):
        reply = await r.dispatch(m, ctx())
        return reply.content if reply else None

    assert await answer(_text("  HOURS ")) == "eq:  HOURS "
    assert await answer(_text("营业时间")) == "eq:营业时间"
    assert await answer(_text("are you OPEN?")) == "co"
    assert await answer(_text("Order 12")) == "rx"
    assert await answer(_text("hours please")) is None
    assert await answer(_event("CLICK", "hours")) is None


async def test_click_and_scan_decorators_narrow_to_their_events():
    r = Router()

    @r.click("ABOUT")
    async def about(m, c):
        return TextReply(f"click:{m.event_key}")

    @r.scan(scene="fair2026")
    async def fair(m, c):
        return TextReply(f"scan:{type(m).__name__}")

    async def answer(m):
        reply = await r.dispatch(m, ctx())
        return reply.content if reply else None

    assert await answer(_event("CLICK", "ABOUT")) == "click:ABOUT"
    assert await answer(_event("CLICK", "OTHER")) is None
    assert await answer(_event("VIEW", "ABOUT")) is None
    assert await answer(_event("subscribe", "qrscene_fair2026")) == "scan:SubscribeEvent"
    assert await answer(_event("SCAN", "fair2026")) == "scan:ScanEvent"
    assert await answer(_event("subscribe")) is None
    assert await answer(_event("SCAN", "other")) is None
    assert await answer(_text("fair2026")) is None


async def test_include_keeps_later_additions():
    outer, inner = Router(), Router()
    outer.include(inner)

    @inner.text(equal="late")
    async def late(m, c):
        return TextReply("added after include")

    reply = await outer.dispatch(_text("late"), c := ctx())
    assert reply == TextReply("added after include")
    assert c.handler.endswith("late")


def test_include_refuses_a_cycle():
    import pytest

    a, b = Router(), Router()
    a.include(b)
    with pytest.raises(ValueError, match="cycle"):
        b.include(a)
    with pytest.raises(ValueError, match="cycle"):
        a.include(a)


async def test_a_handler_may_name_what_answered():
    r = Router()

    @r.text()
    async def silent(m, c):
        c.handler = "named but silent"

    @r.text()
    async def named(m, c):
        c.handler = "rules:hours"
        return TextReply("x")

    c = ctx()
    await r.dispatch(_text("x"), c)
    assert c.handler == "rules:hours"
