"""Answering from the rules file: keywords, default reply, greetings, menu clicks.

Keywords are matched by handlers.keywords (fast with hundreds of rules).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable

from service.messages import (
    InboundMessage,
    MenuEvent,
    ScanEvent,
    SubscribeEvent,
    TextMessage,
)
from service.replies import Reply, TextReply
from service.store.base import Store

from .keywords import Keywords
from .router import Context, Router
from .rules import Keyword, Rules
from .rules_replies import NICKNAME, TEXT_FIELDS, Answer, texts

# An unknown name takes its separator with it: "Hi {nickname}, ..." -> "Hi, ...",
# "Thanks, {nickname}!" -> "Thanks!".
_NAME_GAP = re.compile(r"\s*[,，]?\s*\{nickname\}")


class RuleBook:
    """Rules with their lookup tables, built once per (re)load."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.keywords = rules.keywords
        self._match = Keywords([(k.equal, k.contain, k.regex) for k in rules.keywords])

    def match(self, text: str) -> Keyword | None:
        """The first rule, in file order, that `text` matches."""
        hit = self._match.first(text)
        return None if hit is None else self.keywords[hit.index]


def fill(reply: Reply, name: str | None) -> Reply:
    """`reply` with {nickname} replaced; an unknown name leaves no dangling punctuation."""
    def put(text: str) -> str:
        if NICKNAME not in text:
            return text
        if name:
            return text.replace(NICKNAME, name)
        return _NAME_GAP.sub("", text).lstrip(" ,，:：").strip()

    fields = TEXT_FIELDS.get(type(reply), ())
    return dataclasses.replace(reply, **{f: put(getattr(reply, f)) for f in fields}) \
        if fields else reply


class RulesAnswerer:
    """The rules as a Router; `book` is swapped whole on reload, so a push sees one version."""

    def __init__(self, book: Callable[[], RuleBook], *, store: Store, namespace: str) -> None:
        self.book = book
        self.store = store
        self.namespace = namespace
        self.router = Router()
        self.router.register(self.on_message, msg_types=(
            "text", "image", "voice", "video", "shortvideo", "location", "link"))
        self.router.register(self.on_subscribe, events=("subscribe", "scan"))
        self.router.register(self.on_click, events=("click",))

    def greets(self) -> bool:
        """True when the rules file has a `subscribe` section (it replaces the greeting)."""
        return self.book().rules.subscribe is not None

    async def on_message(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        """A keyword rule, else the default reply (once per follower per `once_per`)."""
        book = self.book()
        if isinstance(msg, TextMessage) and (rule := book.match(msg.content)) is not None:
            return await self.answer(rule.answer, msg, ctx, f"rules:{rule.name}")
        default = book.rules.default
        if default is None:
            return None
        if default.once_per and not await self._first_in_window(msg.openid, default.once_per):
            return None
        return await self.answer(default.answer, msg, ctx, "rules:default")

    async def on_subscribe(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        """A scene's greeting, or the subscribe reply (SCAN: only a known scene)."""
        sub = self.book().rules.subscribe
        if sub is None or not isinstance(msg, SubscribeEvent | ScanEvent):
            return None
        scene = msg.scene if isinstance(msg, SubscribeEvent) else msg.event_key
        answer = sub.scenes.get(scene) if scene else None
        if answer is not None:
            return await self.answer(answer, msg, ctx, f"rules:subscribe:{scene}")
        if isinstance(msg, ScanEvent) or sub.answer is None:
            return None
        return await self.answer(sub.answer, msg, ctx, "rules:subscribe",
                                 anonymous=sub.anonymous)

    async def on_click(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        """A CLICK menu event whose key has a `clicks` entry."""
        if not isinstance(msg, MenuEvent):
            return None
        answer = self.book().rules.clicks.get(msg.event_key)
        if answer is None:
            return None
        return await self.answer(answer, msg, ctx, f"rules:click:{msg.event_key}")

    async def answer(self, answer: Answer, msg: InboundMessage, ctx: Context, name: str, *,
                     anonymous: str | None = None) -> Reply:
        """The passive reply; with reply_all the others follow it (`ctx.after_reply`)."""
        ctx.handler = name
        if answer.mode == "reply_all":
            chosen = list(answer.replies)
        else:
            chosen = [random.choice(answer.replies)]
        nickname: str | None = None
        if answer.uses_nickname and _uses_name(chosen):
            # A lookup only when the chosen reply names the follower (greeting's deadline).
            nickname = await ctx.nickname(msg.openid)
            if not (nickname or "").strip() and anonymous is not None and _uses_name(chosen[:1]):
                chosen = [TextReply(anonymous), *chosen[1:]]
        filled = [fill(r, nickname) for r in chosen]
        ctx.after_reply = tuple(filled[1:])
        return filled[0]

    async def _first_in_window(self, openid: str, seconds: int) -> bool:
        key = f"{self.namespace}rules:default:{openid}"
        try:
            return await self.store.set(key, b"1", ttl=seconds, nx=True)
        except Exception:  # noqa: BLE001 - a store outage: answer rather than stay silent
            return True


def _uses_name(replies: list[Reply]) -> bool:
    return any(NICKNAME in text for r in replies for text in texts(r))

