"""Router: which handler answers which push; first non-None reply wins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from service.messages import InboundMessage, MenuEvent, ScanEvent, SubscribeEvent, TextMessage
from service.replies import Reply

from .keywords import Keywords
from .rules_regex import compile_regex

if TYPE_CHECKING:  # service imports this module: only the type checker follows these
    from structlog.typing import FilteringBoundLogger

    from service.config import Settings
    from service.profiles import Profiles
    from service.wechat_api import WeChatAPI

T = TypeVar("T")
M = TypeVar("M", bound=InboundMessage)


@dataclass(slots=True)
class Context:
    """What a handler may use: the follower's profile, the API, the time left, a logger."""

    deadline: float                      # time.monotonic() by which the reply must be ready
    profiles: Profiles
    api: WeChatAPI
    settings: Settings
    log: FilteringBoundLogger
    handler: str = ""                    # who answered: set by the router (or by the handler)
    # Sent by customer-service message, in order, only once the reply has gone out (rendered
    # in time, or delivered late): never replies 2..n without reply 1.
    after_reply: tuple[Reply, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)

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
        return await self.profiles.nickname(openid, deadline=self.deadline - 0.25)


Handler = Callable[[InboundMessage, Context], Awaitable[Reply | None]]
HandlerOf = Callable[[M, Context], Awaitable[Reply | None]]
Match = Callable[[InboundMessage], bool]
QRScan = SubscribeEvent | ScanEvent


@dataclass(frozen=True, slots=True)
class Route:
    """One registration: which pushes it takes, and the handler."""

    handler: Handler
    msg_types: frozenset[str]   # empty = any
    events: frozenset[str]      # lower-cased; empty = any
    match: Match | None
    name: str
    kinds: tuple[type[InboundMessage], ...] = (InboundMessage,)

    def accepts(self, msg: InboundMessage) -> bool:
        """True when this route should see `msg`."""
        if self.msg_types and msg.msg_type not in self.msg_types:
            return False
        if self.events and msg.event not in self.events:
            return False
        if not isinstance(msg, self.kinds):
            return False
        return self.match is None or self.match(msg)


class Router:
    """Handlers in registration order; decorators and direct calls share `register()`."""

    def __init__(self) -> None:
        self.routes: list[Route | Router] = []

    def register(self, handler: HandlerOf[M], *, msg_types: tuple[str, ...] = (),
                 events: tuple[str, ...] = (), match: Match | None = None,
                 kinds: tuple[type[M], ...] = ()) -> HandlerOf[M]:
        """Add a handler for the given message types and/or events (empty = all); `kinds`
        are the message classes it takes (what the decorators narrow the type to)."""
        types = {t.lower() for t in msg_types}
        if events:
            types.add("event")
        # Safe: accepts() only passes messages that are instances of `kinds`.
        self.routes.append(Route(cast(Handler, handler), frozenset(types),
                                 frozenset(e.lower() for e in events), match,
                                 getattr(handler, "__qualname__", repr(handler)),
                                 kinds or (InboundMessage,)))
        return handler

    def message(self, *msg_types: str, match: Match | None = None) -> Callable[[Handler], Handler]:
        """Decorator: `@router.message("text")` (no types = every non-event message)."""
        types = msg_types or ("text", "image", "voice", "video", "shortvideo", "location", "link")
        return lambda h: self.register(h, msg_types=types, match=match)

    def event(self, *events: str, match: Match | None = None) -> Callable[[Handler], Handler]:
        """Decorator: `@router.event("subscribe")`; event names compare case-insensitively."""
        return lambda h: self.register(h, msg_types=("event",), events=events, match=match)

    def text(self, *, equal: str | Sequence[str] = (), contain: str | Sequence[str] = (),
             regex: str | Sequence[str] = ()) -> Callable[[HandlerOf[TextMessage]],
                                                          HandlerOf[TextMessage]]:
        """Decorator for text messages: whole text (trimmed), a word in it, or a regex; all
        case-insensitive; no condition = every text. The handler takes a TextMessage."""
        patterns = [compile_regex(p) for p in _listed(regex)]  # RE2: RegexError says why not
        words = Keywords([(_listed(equal), _listed(contain), patterns)])
        any_text = not (_listed(equal) or _listed(contain) or patterns)

        def match(msg: InboundMessage) -> bool:
            if any_text:
                return True
            return words.first(msg.content if isinstance(msg, TextMessage) else "") is not None

        return lambda h: self.register(h, msg_types=("text",), match=match, kinds=(TextMessage,))

    def click(self, *keys: str) -> Callable[[HandlerOf[MenuEvent]], HandlerOf[MenuEvent]]:
        """Decorator for CLICK menu events with these keys (none = any); takes a MenuEvent."""
        wanted = frozenset(keys)

        def match(msg: InboundMessage) -> bool:
            return not wanted or (isinstance(msg, MenuEvent) and msg.event_key in wanted)

        return lambda h: self.register(h, events=("click",), match=match, kinds=(MenuEvent,))

    def scan(self, *, scene: str | None = None) -> Callable[[HandlerOf[QRScan]],
                                                            HandlerOf[QRScan]]:
        """Decorator for parameter QR codes: a subscribe through one (EventKey
        qrscene_<scene>) or a follower's SCAN; `scene` None = any scene."""
        def match(msg: InboundMessage) -> bool:
            got = (msg.scene if isinstance(msg, SubscribeEvent)
                   else msg.event_key if isinstance(msg, ScanEvent) else None)
            return got is not None and got != "" and (scene is None or got == scene)

        return lambda h: self.register(h, events=("subscribe", "scan"), match=match,
                                       kinds=(SubscribeEvent, ScanEvent))

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
        """The first non-None reply of the matching handlers, in order."""
        for entry in self.routes:
            if isinstance(entry, Router):
                reply = await entry.dispatch(msg, ctx)
                if reply is not None:
                    return reply
            elif entry.accepts(msg):
                ctx.handler = ""
                reply = await entry.handler(msg, ctx)
                if reply is not None:
                    # A handler may name what answered (the rules: "rules:<rule name>").
                    ctx.handler = ctx.handler or entry.name
                    return reply
        return None


def _listed(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
