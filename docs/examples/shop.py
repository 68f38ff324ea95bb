"""An account's handlers: keywords, a menu button, a QR-code scene, a slow lookup.

Run with WXHOOK_HANDLERS=shop:router (this directory on the import path), or build the app
yourself with create_app(settings, router=router).
"""

from __future__ import annotations

import asyncio

from handlers.router import Context, Router
from service.messages import MenuEvent, ScanEvent, SubscribeEvent, TextMessage
from service.replies import NewsReply, Reply, TextReply

router = Router()


@router.text(equal=["hours", "营业时间"], contain="opening hours")
async def hours(msg: TextMessage, ctx: Context) -> TextReply:
    """The decorator narrows the type: `msg` is a TextMessage, `msg.content` its text."""
    return TextReply("We are open 9:00-17:00.")


@router.text(regex=r"^order\s+#?(\d+)$")
async def order(msg: TextMessage, ctx: Context) -> TextReply:
    """A regex is searched in the trimmed text, case-insensitively."""
    number = msg.content.split()[-1].lstrip("#")
    return TextReply(f"Looking up order {number}.")


@router.click("ABOUT")
async def about(msg: MenuEvent, ctx: Context) -> NewsReply:
    """A menu button's CLICK: `msg.event_key` is its key."""
    return NewsReply(title="About us", description="We make hedgehog food.",
                     url="https://example.com/about", pic_url="https://example.com/a.jpg")


@router.scan(scene="fair2026")
async def fair(msg: SubscribeEvent | ScanEvent, ctx: Context) -> TextReply:
    """Subscribe through the QR code of scene "fair2026", or a follower's SCAN of it."""
    name = await ctx.nickname(msg.openid)  # None when not known in time
    return TextReply(f"Thanks for visiting our booth, {name}!" if name
                     else "Thanks for visiting our booth!")


async def stock_level(item: str) -> int:
    """Stands in for a slow inventory service."""
    await asyncio.sleep(0.01)
    return 3


@router.text(contain="stock")
async def stock(msg: TextMessage, ctx: Context) -> Reply | None:
    """Slow work: bounded by the time left, with an answer for when it runs out."""
    count = await ctx.within(stock_level(msg.content), default=-1)
    if count < 0:
        return TextReply("Still checking; we will message you.")
    return TextReply(f"{count} left.")
