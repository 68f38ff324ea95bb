"""Router: which handler answers which push; first non-None reply wins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from service.messages import InboundMessage
from service.replies import Reply

from .context import Context
from .decorators import Decorator, Decorators, Found, HandlerOf, Match
from .middleware import Answer, Middleware, Next, as_reply, wrap

__all__ = ["Context", "Decorator", "Route", "Router"]

M = TypeVar("M", bound=InboundMessage)
R = TypeVar("R", bound=Answer)
MW = TypeVar("MW", bound=Middleware)

Handler = Callable[[InboundMessage, Context], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Route:
    """One registration: which pushes it takes, and the handler."""

    handler: Handler
    msg_types: frozenset[str]   # empty = any
    events: frozenset[str]      # lower-cased; empty = any
    match: Match | None
    name: str
    kinds: tuple[type[InboundMessage], ...] = (InboundMessage,)
    found: Found | None = None  # the regex match a handler gets as ctx.match

    def accepts(self, msg: InboundMessage) -> bool:
        """True when this route should see `msg`."""
        if self.msg_types and msg.msg_type not in self.msg_types:
            return False
        if self.events and msg.event not in self.events:
            return False
        if not isinstance(msg, self.kinds):
            return False
        return self.match is None or self.match(msg)


class Router(Decorators):
    """Handlers in registration order; decorators and direct calls share `register()`."""

    def __init__(self) -> None:
        self.routes: list[Route | Router] = []
        self._middleware: list[Middleware] = []
        self._chain: Next | None = None  # the middleware around _dispatch(); None: none

    def register(self, handler: HandlerOf[M, R], *, msg_types: tuple[str, ...] = (),
                 events: tuple[str, ...] = (), match: Match | None = None,
                 kinds: tuple[type[M], ...] = (), found: Found | None = None) -> HandlerOf[M, R]:
        """Add a handler for the given message types and/or events (empty = all); `kinds`
        are the message classes it takes (what the decorators narrow the type to); `found`
        gives the regex match the handler sees as `ctx.match`."""
        types = {t.lower() for t in msg_types}
        if events:
            types.add("event")
        # Safe: accepts() only passes messages that are instances of `kinds`.
        self.routes.append(Route(cast(Handler, handler), frozenset(types),
                                 frozenset(e.lower() for e in events), match,
                                 getattr(handler, "__qualname__", repr(handler)),
                                 kinds or (InboundMessage,), found))
        return handler

    def middleware(self, mw: MW) -> MW:
        """Run `mw` around every dispatch of this router (its included routers too); usable
        as a decorator. The first registered runs outermost."""
        self._middleware.append(mw)
        self._chain = wrap(self._middleware, self._dispatch)
        return mw

    def include(self, other: Router) -> None:
        """Consult `other` after this router's routes so far; it stays live, so handlers
        added to `other` later are seen too."""
        if other is self or self in other._walk():
            raise ValueError("including this router would make a cycle")
        self.routes.append(other)

    def _walk(self) -> list[Router]:
        found = []
        for entry in self.routes:
            if isinstance(entry, Router):
                found += [entry, *entry._walk()]
        return found

    async def dispatch(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        """The first non-None reply of the matching handlers, in order, through this
        router's middleware."""
        if self._chain is not None:
            return await self._chain(msg, ctx)
        return await self._dispatch(msg, ctx)

    async def _dispatch(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        for entry in self.routes:
            if isinstance(entry, Router):
                reply = await entry.dispatch(msg, ctx)
                if reply is not None:
                    return reply
            elif entry.accepts(msg):
                ctx.handler = ""
                ctx.match = None if entry.found is None else entry.found(msg)
                reply = as_reply(await entry.handler(msg, ctx), entry.name)
                if reply is not None:
                    # A handler may name what answered (the rules: "rules:<rule name>").
                    ctx.handler = ctx.handler or entry.name
                    return reply
        return None
