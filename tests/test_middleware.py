"""handlers.middleware: code around every dispatch of a router, through the real route."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from handlers import (
    Context,
    InboundMessage,
    Next,
    NoReply,
    Reply,
    Router,
    SubscribeEvent,
    TextMessage,
)
from handlers import greeting as greeting_module
from handlers.testing import HandlerClient

BLOCKED = "oBlockedFollower000000000001"


async def test_middleware_runs_around_the_handlers_first_registered_outermost() -> None:
    router = Router()
    events: list[str] = []

    @router.middleware
    async def outer(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        events.append("outer before")
        reply = await call_next(msg, ctx)
        events.append(f"outer after {ctx.handler}")
        return reply

    @router.middleware
    async def inner(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        events.append("inner before")
        reply = await call_next(msg, ctx)
        events.append("inner after")
        return reply

    @router.text()
    async def handler(msg: TextMessage, ctx: Context) -> str:
        events.append("handler")
        return "hi"

    async with HandlerClient(router) as wx:
        assert (await wx.text("x"))["Content"] == "hi"
        assert events == ["outer before", "inner before", "handler", "inner after",
                          "outer after " + handler.__qualname__]
        events.clear()
        assert await wx.click("nothing matches") == {}
        assert events == ["outer before", "inner before", "inner after", "outer after "]


async def test_middleware_sees_the_handlers_error_and_may_answer_instead(capsys: Any) -> None:
    router = Router()
    caught: list[str] = []

    @router.middleware
    async def on_error(msg: InboundMessage, ctx: Context, call_next: Next) -> str | Reply | None:
        try:
            return await call_next(msg, ctx)
        except LookupError as exc:
            caught.append(str(exc))
            return "Sorry, try again later."

    @router.text(equal="lookup")
    async def fails(msg: TextMessage, ctx: Context) -> str:
        raise LookupError("no such order")

    @router.text(equal="crash")
    async def crashes(msg: TextMessage, ctx: Context) -> str:
        raise RuntimeError("not handled by the middleware")

    async with HandlerClient(router) as wx:
        assert (await wx.text("lookup"))["Content"] == "Sorry, try again later."
        assert caught == ["no such order"]
        # What the middleware lets through is the server's: logged, answered "success".
        assert await wx.text("crash") == {}
    assert "handler_failed" in capsys.readouterr().out


def blocklist_router() -> Router:
    """An owner's router with a block list, included before the built-in greeting."""
    mine = Router()

    @mine.middleware
    async def blocklist(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        if msg.openid == BLOCKED:
            ctx.handler = "blocklist"
            return NoReply()  # answered: the rules and the greeting are not asked
        return await call_next(msg, ctx)

    @mine.text()
    async def echo(msg: TextMessage, ctx: Context) -> str:
        return msg.content

    app_router = Router()
    app_router.include(mine)
    app_router.include(greeting_module.router)
    return app_router


async def test_a_block_list_silences_every_later_router() -> None:
    with capture_logs() as logs:
        async with HandlerClient(blocklist_router()) as wx:
            assert await wx.subscribe(openid=BLOCKED) == {}
            assert await wx.text("hello", openid=BLOCKED) == {}
            assert (await wx.subscribe())["Content"] == "Welcome, 刺猬宝宝!"
            assert (await wx.text("hello"))["Content"] == "hello"
    blocked = [p for p in logs if p["event"] == "push" and p["openid"].startswith("oBlo")]
    assert [(p["handler"], p["outcome"]) for p in blocked] == [("blocklist", "no_reply")] * 2


async def test_an_audit_line_per_push_with_who_answered() -> None:
    router = Router()

    @router.middleware
    async def audit(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        reply = await call_next(msg, ctx)
        ctx.log.info("audit", kind=msg.event or msg.msg_type, handler=ctx.handler or None,
                     reply=None if reply is None else reply.msg_type)
        return reply

    @router.subscribe()
    async def hello(msg: SubscribeEvent, ctx: Context) -> str:
        return "hello"

    with capture_logs() as logs:
        async with HandlerClient(router) as wx:
            await wx.subscribe()
            await wx.text("unanswered")
    audits = [line for line in logs if line["event"] == "audit"]
    assert [(a["kind"], a["handler"], a["reply"]) for a in audits] == [
        ("subscribe", hello.__qualname__, "text"), ("text", None, None)]


async def test_middleware_of_an_included_router_runs_only_when_its_turn_comes() -> None:
    outer, inner = Router(), Router()
    ran: list[str] = []

    @outer.text(equal="outer")
    async def answered_outside(msg: TextMessage, ctx: Context) -> str:
        return "outer"

    outer.include(inner)

    @inner.middleware
    async def counts(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        ran.append(msg.openid)
        return await call_next(msg, ctx)

    @inner.text()
    async def answered_inside(msg: TextMessage, ctx: Context) -> str:
        return "inner"

    async with HandlerClient(outer) as wx:
        assert (await wx.text("outer"))["Content"] == "outer"
        assert ran == []
        assert (await wx.text("other"))["Content"] == "inner"
        assert len(ran) == 1


async def test_middleware_passes_data_to_handlers_and_may_replace_the_reply() -> None:
    router = Router()

    @router.middleware
    async def ab_switch(msg: InboundMessage, ctx: Context, call_next: Next) -> str | Reply | None:
        ctx.extra["variant"] = "B" if msg.openid.endswith("1") else "A"
        reply = await call_next(msg, ctx)
        return "replaced" if reply is None else reply

    @router.text(equal="variant")
    async def variant(msg: TextMessage, ctx: Context) -> str:
        return f"variant {ctx.extra['variant']}"

    async with HandlerClient(router) as wx:
        assert (await wx.text("variant"))["Content"] == "variant B"
        assert (await wx.text("variant", openid="oFollowerA"))["Content"] == "variant A"
        assert (await wx.text("anything"))["Content"] == "replaced"
