"""Router: decorators and register() share one path; first non-None reply wins."""

import time

from handlers.greeting import greeting_text
from handlers.router import Context, Router
from service.messages import parse_message
from service.replies import TextReply


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
    assert reply == TextReply("a") and seen == ["silent", "answers"] and c.handler.endswith("answers")


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


async def test_within_gives_the_default_when_time_runs_out():
    import asyncio
    c = Context(deadline=time.monotonic() + 0.3, profiles=None, api=None, settings=None, log=None)

    async def slow():
        await asyncio.sleep(5)
        return "late"

    started = time.monotonic()
    assert await c.within(slow(), "default") == "default"
    assert time.monotonic() - started < 0.3
