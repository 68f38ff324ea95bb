"""The account's default behaviour: the greeting, then a few keyword rules."""

from __future__ import annotations

from service.messages import InboundMessage, TextMessage
from service.replies import TextReply

from . import greeting
from .router import Context, Router

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


def default_router() -> Router:
    """What `wxhook serve` answers with unless the app is built with another router."""
    router = Router()
    router.include(greeting.router)
    router.include(keyword({"help", "帮助", "?"}))
    return router
