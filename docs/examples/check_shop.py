"""Testing handlers with the project's test client: real /wechat, in-process sandbox."""

from __future__ import annotations

from handlers.testing import HandlerClient

from .shop import router


async def check_shop() -> None:
    """What the README's handler guide promises about shop.py, plain and safe mode."""
    for aes in (False, True):
        async with HandlerClient(router, aes=aes) as wx:
            assert (await wx.text("  HOURS "))["Content"] == "We are open 9:00-17:00."
            assert (await wx.text("order #42"))["Content"] == "Looking up order 42."
            assert (await wx.click("ABOUT"))["Title"] == "About us"
            assert (await wx.subscribe(scene="fair2026"))["Content"] == (
                "Thanks for visiting our booth, 刺猬宝宝!")
            assert (await wx.scan("fair2026"))["Content"].startswith("Thanks for visiting")
            assert (await wx.text("stock of hay?"))["Content"] == "3 left."
            # Nothing of ours matched: the built-in defaults are not in this router.
            assert await wx.text("something else") == {}
