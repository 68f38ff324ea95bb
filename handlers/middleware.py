"""Middleware: code around every dispatch of a router (before, after, on error).

    @router.middleware
    async def audit(msg: InboundMessage, ctx: Context, call_next: Next) -> Reply | None:
        reply = await call_next(msg, ctx)       # the router's handlers (and included routers)
        ctx.log.info("audit", handler=ctx.handler)
        return reply

A middleware may answer without calling `call_next` (a block list returns NoReply()), change
what it returns, or catch what the handlers raised. The first registered runs outermost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from service.messages import InboundMessage
from service.replies import Reply, TextReply

if TYPE_CHECKING:
    from .context import Context

Answer = Reply | str | None  # what a handler or middleware returns; a str is a text reply
Next = Callable[[InboundMessage, "Context"], Awaitable[Reply | None]]
Middleware = Callable[[InboundMessage, "Context", Next], Awaitable[Answer]]


def as_reply(answer: object, who: object) -> Reply | None:
    """A handler's answer as a Reply: a str is a text reply, "" is none."""
    if answer is None or isinstance(answer, Reply):
        return answer
    if isinstance(answer, str):
        return TextReply(answer) if answer else None
    # Untyped code can return anything; say whose answer it was rather than fail in the XML.
    raise TypeError(f"{who} returned a {type(answer).__name__}; return a str, a Reply "
                    "or None")


def wrap(middleware: Sequence[Middleware], inner: Next) -> Next:
    """`inner` inside `middleware`, the first one outermost."""
    for mw in reversed(middleware):
        inner = _layer(mw, inner)
    return inner


def _layer(mw: Middleware, inner: Next) -> Next:
    async def call(msg: InboundMessage, ctx: Context) -> Reply | None:
        return as_reply(await mw(msg, ctx, inner), getattr(mw, "__qualname__", mw))
    return call
