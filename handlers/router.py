"""Router: which handler answers which push; first non-None reply wins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.messages import InboundMessage
from service.replies import Reply

T = TypeVar("T")


@dataclass(slots=True)
class Context:
    """What a handler may use: the follower's profile, the API, the time left, a logger."""

    deadline: float                      # time.monotonic() by which the reply must be ready
    profiles: Any                        # service.profiles.Profiles
    api: Any                             # service.wechat_api.WeChatAPI
    settings: Any                        # service.config.Settings
    log: Any
    handler: str = ""                    # set by the router: the handler that answered
    extra: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds left before the reply is due."""
        return self.deadline - time.monotonic()

    async def within(self, coro: Coroutine[Any, Any, T], default: T, *,
                     margin: float = 0.25) -> T:
        """Await `coro`, or give `default` when it would eat into the reply's margin."""
        budget = self.remaining() - margin
        if budget <= 0:
            coro.close()
            return default
        try:
            return await asyncio.wait_for(coro, budget)
        except TimeoutError:
            return default

    async def nickname(self, openid: str) -> str | None:
        """The follower's nickname if known in time, else None."""
        # Profiles bounds its own waiting by the deadline (no extra task, as within() needs).
        name: str | None = await self.profiles.nickname(openid, deadline=self.deadline - 0.25)
        return name


Handler = Callable[[InboundMessage, Context], Awaitable[Reply | None]]
Match = Callable[[InboundMessage], bool]


@dataclass(frozen=True, slots=True)
class Route:
    """One registration: which pushes it takes, and the handler."""

    handler: Handler
    msg_types: frozenset[str]   # empty = any
    events: frozenset[str]      # lower-cased; empty = any
    match: Match | None
    name: str

    def accepts(self, msg: InboundMessage) -> bool:
        """True when this route should see `msg`."""
        if self.msg_types and msg.msg_type not in self.msg_types:
            return False
        if self.events and msg.event not in self.events:
            return False
        return self.match is None or self.match(msg)


class Router:
    """Handlers in registration order; decorators and direct calls share `register()`."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def register(self, handler: Handler, *, msg_types: tuple[str, ...] = (),
                 events: tuple[str, ...] = (), match: Match | None = None) -> Handler:
        """Add a handler for the given message types and/or events (empty = all)."""
        types = {t.lower() for t in msg_types}
        if events:
            types.add("event")
        self.routes.append(Route(handler, frozenset(types), frozenset(e.lower() for e in events),
                                 match, getattr(handler, "__qualname__", repr(handler))))
        return handler

    def message(self, *msg_types: str, match: Match | None = None) -> Callable[[Handler], Handler]:
        """Decorator: `@router.message("text")` (no types = every non-event message)."""
        types = msg_types or ("text", "image", "voice", "video", "shortvideo", "location", "link")
        return lambda h: self.register(h, msg_types=types, match=match)

    def event(self, *events: str, match: Match | None = None) -> Callable[[Handler], Handler]:
        """Decorator: `@router.event("subscribe")`; event names compare case-insensitively."""
        return lambda h: self.register(h, msg_types=("event",), events=events, match=match)

    def include(self, other: Router) -> None:
        """Append another router's routes after this one's."""
        self.routes.extend(other.routes)

    async def dispatch(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        """The first non-None reply of the matching handlers, in order."""
        for route in self.routes:
            if route.accepts(msg):
                reply = await route.handler(msg, ctx)
                if reply is not None:
                    ctx.handler = route.name
                    return reply
        return None
