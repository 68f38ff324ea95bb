# test_shop.py
"""Run with pytest (and pytest-asyncio) next to shop.py and conversation.py."""

from handlers.testing import HandlerClient

from conversation import router as conversation
from shop import router as shop


async def test_shop() -> None:
    for aes in (False, True):  # plain, and safe mode (encrypted both ways)
        async with HandlerClient(shop, aes=aes) as wx:
            assert (await wx.text("  HOURS "))["Content"] == "We are open 9:00-17:00."
            assert (await wx.text("order #42"))["Content"] == "Looking up order 42."
            assert (await wx.click("ABOUT"))["Title"] == "About us"
            assert (await wx.subscribe(scene="fair2026"))["Content"] == (
                "Thanks for visiting our booth, 刺猬宝宝!")
            assert await wx.text("something else") == {}  # "success": nothing matched


async def test_conversation() -> None:
    async with HandlerClient(conversation) as wx:
        assert await wx.text("1234") == {}
        assert (await wx.text("order"))["Content"] == "Send your order number."
        assert (await wx.text("1234"))["Content"] == "Looking up order 1234."
        assert await wx.text("1234") == {}  # the step is used up
