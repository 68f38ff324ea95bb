"""The benchmark's text handler: the same answer as the WeRoBot peer gives."""

from __future__ import annotations

from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import TextReply
from wxhook.router import Context, Router

router = Router()


@router.message("text")
async def echo(msg: InboundMessage, ctx: Context) -> TextReply | None:
    """Answer text with "You said: <text>", as bench/peers/werobot_app.py does."""
    return TextReply(f"You said: {msg.content}") if isinstance(msg, TextMessage) else None
