"""Greet new followers (and QR scans) by name; "Welcome!" when no name is known in time."""

from __future__ import annotations

from wxhook.messages import InboundMessage
from wxhook.replies import TextReply
from wxhook.router import Context, Router

router = Router()


def greeting_text(nickname: str | None, *, template: str, anonymous: str) -> str:
    """Never "Welcome, !" nor "Welcome, None!": a blank name gets the anonymous form."""
    name = (nickname or "").strip()
    return template.format(nickname=name) if name else anonymous


@router.event("subscribe", "SCAN")
async def greet(msg: InboundMessage, ctx: Context) -> TextReply:
    """Subscribe (plain or through a QR code) and SCAN both get the greeting."""
    nickname = await ctx.nickname(msg.openid)
    s = ctx.settings
    return TextReply(greeting_text(nickname, template=s.greeting, anonymous=s.greeting_anonymous))
