"""The Router's typed decorators: one per message and event WeChat pushes, each narrowing
the handler's first parameter to that push's class, so mypy checks what a handler reads.

Every one takes `when=`, a Filter (or any predicate) over that class, tried after the
decorator's own conditions. They all register through Router.register().
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from wxhook.keywords import Keywords
from wxhook.messages import (
    EventMessage,
    ImageMessage,
    InboundMessage,
    JobFinishEvent,
    LinkMessage,
    LocationEvent,
    LocationMessage,
    LocationSelectEvent,
    MenuEvent,
    PicEvent,
    ScanCodeEvent,
    ScanEvent,
    SubscribeEvent,
    TextMessage,
    UnsubscribeEvent,
    VideoMessage,
    VoiceMessage,
)
from wxhook.middleware import Answer
from wxhook.rules_regex import Match as RegexMatch
from wxhook.rules_regex import compile_regex

if TYPE_CHECKING:
    from wxhook.context import Context

M = TypeVar("M", bound=InboundMessage)
R = TypeVar("R", bound=Answer)

HandlerOf = Callable[[M, "Context"], Awaitable[R]]  # a handler of M answering R
Match = Callable[[InboundMessage], bool]
Found = Callable[[InboundMessage], RegexMatch | None]
QRScan = SubscribeEvent | ScanEvent
MESSAGE_TYPES = ("text", "image", "voice", "video", "shortvideo", "location", "link")


class Decorator(Protocol[M]):
    """Registers a handler of M and gives it back unchanged."""

    def __call__(self, handler: HandlerOf[M, R], /) -> HandlerOf[M, R]: ...


class Decorators(ABC):
    """The decorators; Router supplies register()."""

    @abstractmethod
    def register(self, handler: HandlerOf[M, R], *, msg_types: tuple[str, ...] = (),
                 events: tuple[str, ...] = (), match: Match | None = None,
                 kinds: tuple[type[M], ...] = (), found: Found | None = None) -> HandlerOf[M, R]:
        """Add a handler (Router.register)."""

    def _on(self, kinds: tuple[type[M], ...], *, msg_types: tuple[str, ...] = (),
            events: tuple[str, ...] = (), test: Callable[[M], bool] | None = None,
            when: Callable[[M], bool] | None = None, found: Found | None = None) -> Decorator[M]:
        both = _both(test, when)
        # Safe: Route.accepts() calls it only with instances of `kinds`.
        match = cast(Match | None, both)

        def decorate(handler: HandlerOf[M, R]) -> HandlerOf[M, R]:
            return self.register(handler, msg_types=msg_types, events=events, match=match,
                                 kinds=kinds, found=found)

        return decorate

    # -- the generic two ---------------------------------------------------------------------

    def message(self, *msg_types: str, match: Match | None = None) -> Decorator[InboundMessage]:
        """`@router.message("text", "image")` (none: every message, no event); the handler
        takes an InboundMessage."""
        return self._on((InboundMessage,), msg_types=msg_types or MESSAGE_TYPES, when=match)

    def event(self, *events: str, match: Match | None = None) -> Decorator[InboundMessage]:
        """`@router.event("subscribe")` (none: every event); names compare
        case-insensitively; the handler takes an InboundMessage."""
        return self._on((InboundMessage,), msg_types=("event",), events=events, when=match)

    # -- messages ----------------------------------------------------------------------------

    def text(self, *, equal: str | Sequence[str] = (), contain: str | Sequence[str] = (),
             regex: str | Sequence[str] = (),
             when: Callable[[TextMessage], bool] | None = None) -> Decorator[TextMessage]:
        """Texts: the whole text (trimmed), a word in it, or a regex (RE2) searched in the
        trimmed text, all case-insensitive; none: every text. A regex's match is `ctx.match`."""
        patterns = [compile_regex(p) for p in _listed(regex)]  # RE2: RegexError says why not
        words = Keywords([(_listed(equal), _listed(contain), patterns)])
        any_text = not (_listed(equal) or _listed(contain) or patterns)

        def found(msg: InboundMessage) -> RegexMatch | None:
            hit = words.first(msg.content) if isinstance(msg, TextMessage) else None
            return None if hit is None else hit.match

        def test(msg: TextMessage) -> bool:
            return words.first(msg.content) is not None

        return self._on((TextMessage,), msg_types=("text",), test=None if any_text else test,
                        when=when, found=found if patterns else None)

    def image(self, *, when: Callable[[ImageMessage], bool] | None = None
              ) -> Decorator[ImageMessage]:
        """Pictures."""
        return self._on((ImageMessage,), msg_types=("image",), when=when)

    def voice(self, *, when: Callable[[VoiceMessage], bool] | None = None
              ) -> Decorator[VoiceMessage]:
        """Voice clips (`msg.recognition` when speech recognition is on)."""
        return self._on((VoiceMessage,), msg_types=("voice",), when=when)

    def video(self, *, when: Callable[[VideoMessage], bool] | None = None
              ) -> Decorator[VideoMessage]:
        """Videos."""
        return self._on((VideoMessage,), msg_types=("video",), when=when)

    def shortvideo(self, *, when: Callable[[VideoMessage], bool] | None = None
                   ) -> Decorator[VideoMessage]:
        """Short videos (a VideoMessage whose msg_type is "shortvideo")."""
        return self._on((VideoMessage,), msg_types=("shortvideo",), when=when)

    def location(self, *, when: Callable[[LocationMessage], bool] | None = None
                 ) -> Decorator[LocationMessage]:
        """A location the follower sent in the chat (the periodic report: location_report)."""
        return self._on((LocationMessage,), msg_types=("location",), when=when)

    def link(self, *, when: Callable[[LinkMessage], bool] | None = None
             ) -> Decorator[LinkMessage]:
        """Shared links."""
        return self._on((LinkMessage,), msg_types=("link",), when=when)

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, *, scene: str | None = None,
                  when: Callable[[SubscribeEvent], bool] | None = None
                  ) -> Decorator[SubscribeEvent]:
        """Every new follower; with `scene`, only those who came through that QR scene."""
        def test(msg: SubscribeEvent) -> bool:
            return msg.scene == scene

        return self._on((SubscribeEvent,), events=("subscribe",),
                        test=None if scene is None else test, when=when)

    def unsubscribe(self, *, when: Callable[[UnsubscribeEvent], bool] | None = None
                    ) -> Decorator[UnsubscribeEvent]:
        """A follower left (clean up; a reply cannot reach them)."""
        return self._on((UnsubscribeEvent,), events=("unsubscribe",), when=when)

    def scan(self, *, scene: str | None = None,
             when: Callable[[QRScan], bool] | None = None) -> Decorator[QRScan]:
        """Parameter QR codes: a subscribe through one (EventKey qrscene_<scene>) or a
        follower's SCAN; `scene` None = any scene."""
        def test(msg: QRScan) -> bool:
            got = msg.scene if isinstance(msg, SubscribeEvent) else msg.event_key
            return got is not None and got != "" and (scene is None or got == scene)

        return self._on((SubscribeEvent, ScanEvent), events=("subscribe", "scan"), test=test,
                        when=when)

    def click(self, *keys: str, when: Callable[[MenuEvent], bool] | None = None
              ) -> Decorator[MenuEvent]:
        """CLICK menu events with these keys (none: any)."""
        return self._on((MenuEvent,), events=("click",), test=_keyed(keys), when=when)

    def view(self, *urls: str, when: Callable[[MenuEvent], bool] | None = None
             ) -> Decorator[MenuEvent]:
        """VIEW menu events (a link button; `event_key` is its URL) for these URLs (none:
        any). The follower is on the page already: a reply is not shown."""
        return self._on((MenuEvent,), events=("view",), test=_keyed(urls), when=when)

    def view_miniprogram(self, *paths: str, when: Callable[[MenuEvent], bool] | None = None
                         ) -> Decorator[MenuEvent]:
        """A menu button opened a mini program page (`event_key`); none: any page."""
        return self._on((MenuEvent,), events=("view_miniprogram",), test=_keyed(paths),
                        when=when)

    def location_report(self, *, when: Callable[[LocationEvent], bool] | None = None
                        ) -> Decorator[LocationEvent]:
        """The LOCATION event: the periodic report of a follower who allowed it."""
        return self._on((LocationEvent,), events=("location",), when=when)

    def scancode_push(self, *keys: str, when: Callable[[ScanCodeEvent], bool] | None = None
                      ) -> Decorator[ScanCodeEvent]:
        """A menu scan button (WeChat handles the code itself); `keys`: the buttons."""
        return self._on((ScanCodeEvent,), events=("scancode_push",), test=_keyed(keys),
                        when=when)

    def scancode_waitmsg(self, *keys: str,
                         when: Callable[[ScanCodeEvent], bool] | None = None
                         ) -> Decorator[ScanCodeEvent]:
        """A menu scan button whose result waits for this reply; `keys`: the buttons."""
        return self._on((ScanCodeEvent,), events=("scancode_waitmsg",), test=_keyed(keys),
                        when=when)

    def pic_sysphoto(self, *keys: str, when: Callable[[PicEvent], bool] | None = None
                     ) -> Decorator[PicEvent]:
        """A menu camera button; `keys`: the buttons."""
        return self._on((PicEvent,), events=("pic_sysphoto",), test=_keyed(keys), when=when)

    def pic_photo_or_album(self, *keys: str, when: Callable[[PicEvent], bool] | None = None
                           ) -> Decorator[PicEvent]:
        """A menu camera-or-album button; `keys`: the buttons."""
        return self._on((PicEvent,), events=("pic_photo_or_album",), test=_keyed(keys),
                        when=when)

    def pic_weixin(self, *keys: str, when: Callable[[PicEvent], bool] | None = None
                   ) -> Decorator[PicEvent]:
        """A menu WeChat-album button; `keys`: the buttons."""
        return self._on((PicEvent,), events=("pic_weixin",), test=_keyed(keys), when=when)

    def location_select(self, *keys: str,
                        when: Callable[[LocationSelectEvent], bool] | None = None
                        ) -> Decorator[LocationSelectEvent]:
        """A menu location-picker button; `keys`: the buttons."""
        return self._on((LocationSelectEvent,), events=("location_select",),
                        test=_keyed(keys), when=when)

    def template_job_finish(self, *, when: Callable[[JobFinishEvent], bool] | None = None
                            ) -> Decorator[JobFinishEvent]:
        """TEMPLATESENDJOBFINISH: a template message's delivery result (`msg.status`)."""
        return self._on((JobFinishEvent,), events=("templatesendjobfinish",), when=when)

    def mass_job_finish(self, *, when: Callable[[JobFinishEvent], bool] | None = None
                        ) -> Decorator[JobFinishEvent]:
        """MASSSENDJOBFINISH: a mass send's result and counts."""
        return self._on((JobFinishEvent,), events=("masssendjobfinish",), when=when)


def _both(test: Callable[[M], bool] | None,
          when: Callable[[M], bool] | None) -> Callable[[M], bool] | None:
    if test is None or when is None:
        return test or when
    return lambda msg: test(msg) and bool(when(msg))


def _keyed(keys: tuple[str, ...]) -> Callable[[EventMessage], bool] | None:
    """Events whose EventKey is one of `keys` (none: any)."""
    if not keys:
        return None
    wanted = frozenset(keys)

    def test(msg: EventMessage) -> bool:
        return msg.event_key in wanted

    return test


def _listed(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
