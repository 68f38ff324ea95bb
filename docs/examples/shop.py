# shop.py
"""An account's handlers: keywords, an order number, a menu button, a QR-code scene."""

from handlers import Context, MenuEvent, NewsReply, Router, SubscribeEvent, TextMessage

router = Router()


@router.text(equal=["hours", "营业时间"], contain="opening hours")
async def hours(msg: TextMessage, ctx: Context) -> str:
    return "We are open 9:00-17:00."  # a str is a text reply


@router.text(regex=r"^order\s+#?(?P<number>\d+)$")
async def order(msg: TextMessage, ctx: Context) -> str:
    assert ctx.match is not None  # set whenever a regex= matched
    return f"Looking up order {ctx.match['number']}."


@router.click("ABOUT")
async def about(msg: MenuEvent, ctx: Context) -> NewsReply:
    return NewsReply(title="About us", description="We make hedgehog food.",
                     url="https://example.com/about", pic_url="https://example.com/a.jpg")


@router.subscribe(scene="fair2026")
async def fair(msg: SubscribeEvent, ctx: Context) -> str:
    name = await ctx.nickname(msg.openid)  # None when not known in time
    return f"Thanks for visiting our booth, {name}!" if name else "Thanks for visiting!"
