"""The account's default behaviour: the greeting, then a few keyword rules."""

from __future__ import annotations

import importlib

from service.messages import InboundMessage, TextMessage
from service.replies import TextReply

from . import greeting
from .router import Context, Router
from .rules_router import RulesAnswerer

HELP = "Send any message and we will get back to you. Send 'help' to see this again."


def keyword(words: set[str]) -> Router:
    """A router answering HELP to the given keywords (case-insensitive, trimmed)."""
    r = Router()

    def is_keyword(msg: InboundMessage) -> bool:
        return isinstance(msg, TextMessage) and msg.content.strip().lower() in words

    @r.message("text", match=is_keyword)
    async def help_text(msg: InboundMessage, ctx: Context) -> TextReply:
        return TextReply(HELP)

    return r


def load_router(spec: str) -> Router:
    """Import "package.module:name" and return that Router."""
    module_name, _, attr = spec.partition(":")
    found = getattr(importlib.import_module(module_name), attr, None)
    if not isinstance(found, Router):
        raise TypeError(f"WXHOOK_HANDLERS: {spec} is not a handlers.router.Router")
    return found


def default_router(extra: str = "", *, rules: RulesAnswerer | None = None) -> Router:
    """The account's routers from WXHOOK_HANDLERS, its rules file, then the built-in
    greeting and keyword rules (a rules file's `subscribe` replaces the greeting)."""
    router = Router()
    for spec in filter(None, (p.strip() for p in extra.split(","))):
        router.include(load_router(spec))
    if rules is None:
        router.include(greeting.router)
    else:
        router.include(rules.router)
        router.register(greeting.greet, events=("subscribe", "SCAN"),
                        match=lambda msg: not rules.greets())
    router.include(keyword({"help", "帮助", "?"}))
    return router
