# vip.py
"""Filters: predicates over the decorator's message type, combined with & | ~."""

from handlers import Context, Filter, InboundMessage, MenuEvent, Router, TextMessage

VIPS = {"oVIPFollower0000000000000001"}

router = Router()
vip: Filter[InboundMessage] = Filter(lambda msg: msg.openid in VIPS)


@Filter
def shouting(msg: TextMessage) -> bool:
    return msg.content.isupper()


@router.text(contain="price", when=vip & ~shouting)
async def vip_prices(msg: TextMessage, ctx: Context) -> str:
    return "Your prices: https://example.com/vip"


@router.text(contain="price", when=lambda msg: msg.content.endswith("!!"))
async def calm(msg: TextMessage, ctx: Context) -> str:
    return "No need to shout: https://example.com/prices"


@Filter
def urgent(msg: MenuEvent) -> bool:
    return msg.event_key.endswith("_NOW")


@router.click("SUPPORT", "SUPPORT_NOW", when=vip | urgent)
async def call_us(msg: MenuEvent, ctx: Context) -> str:
    return "Call us: 400-000-0000"
