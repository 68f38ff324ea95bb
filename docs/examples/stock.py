# stock.py
"""Slow work: bounded by the time left, with an answer for when it runs out."""

import asyncio

from handlers import Context, Router, TextMessage

router = Router()


async def stock_level(item: str) -> int:
    """Stands in for a slow inventory service."""
    await asyncio.sleep(0.01)
    return 3


@router.text(contain="stock")
async def stock(msg: TextMessage, ctx: Context) -> str:
    count = await ctx.within(stock_level(msg.content), default=-1)
    if count < 0:
        return "Still checking; we will message you."
    return f"{count} left."
