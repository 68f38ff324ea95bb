"""wxhook.filters: predicates that compose with & | ~, used as `when=` on the real route."""

from __future__ import annotations

import itertools

import pytest

from wxhook import Context, Filter, InboundMessage, MenuEvent, Router, TextMessage
from wxhook.testing import HandlerClient

VIP = "oVIPFollower0000000000000001"
OTHER = "oOtherFollower00000000000001"


def text(content: str, openid: str = OTHER) -> TextMessage:
    return TextMessage(to_user="gh", from_user=openid, create_time=0, msg_type="text",
                       msg_id="1", content=content)


@pytest.mark.parametrize(("a", "b"), list(itertools.product([False, True], repeat=2)))
def test_and_or_not_follow_their_truth_tables(a: bool, b: bool) -> None:
    fa: Filter[InboundMessage] = Filter(lambda m: a)
    fb: Filter[TextMessage] = Filter(lambda m: b)

    def plain(m: InboundMessage) -> bool:  # a plain predicate combines on either side
        return b

    msg = text("x")
    assert (fa & fb)(msg) is (a and b)
    assert (fa | fb)(msg) is (a or b)
    assert (~fa)(msg) is (not a)
    assert (fa & plain)(msg) is (a and b) and (plain & fa)(msg) is (a and b)
    assert (fa | plain)(msg) is (a or b) and (plain | fa)(msg) is (a or b)
    assert (~(fa & fb))(msg) is (not (a and b))


def test_composition_short_circuits_left_to_right() -> None:
    calls: list[str] = []

    def named(name: str, result: bool) -> Filter[InboundMessage]:
        def test(m: InboundMessage) -> bool:
            calls.append(name)
            return result
        return Filter(test, name=name)

    (named("a", False) & named("b", True))(text("x"))
    (named("c", True) | named("d", True))(text("x"))
    assert calls == ["a", "c"]
    assert repr(~named("a", True) & named("b", True)) == "(~a & b)"


async def test_when_narrows_a_decorator_through_the_route() -> None:
    router = Router()
    vip: Filter[InboundMessage] = Filter(lambda m: m.openid == VIP)
    shouting: Filter[TextMessage] = Filter(lambda m: m.content.isupper())

    @router.text(contain="price", when=vip & ~shouting)
    async def vip_price(msg: TextMessage, ctx: Context) -> str:
        return "vip price"

    @router.text(contain="price", when=shouting | (lambda m: m.content.endswith("!")))
    async def calm_down(msg: TextMessage, ctx: Context) -> str:
        return "no need to shout"

    @router.click("MENU", when=vip)
    async def vip_menu(msg: MenuEvent, ctx: Context) -> str:
        return "vip menu"

    async with HandlerClient(router) as wx:
        assert (await wx.text("price?", openid=VIP))["Content"] == "vip price"
        assert (await wx.text("PRICE", openid=VIP))["Content"] == "no need to shout"
        assert (await wx.text("price!", openid=OTHER))["Content"] == "no need to shout"
        assert await wx.text("price?", openid=OTHER) == {}
        assert (await wx.click("MENU", openid=VIP))["Content"] == "vip menu"
        assert await wx.click("MENU", openid=OTHER) == {}


async def test_a_filter_only_sees_its_decorators_type() -> None:
    # Tried after the decorator's own conditions: a text filter never gets an event, so it
    # may read `content` without checking the type first.
    router = Router()
    seen: list[str] = []

    def reads_content(m: TextMessage) -> bool:
        seen.append(type(m).__name__)
        return m.content == "yes"

    @router.text(regex="^y", when=Filter(reads_content))
    async def yes(msg: TextMessage, ctx: Context) -> str:
        return "ok"

    async with HandlerClient(router) as wx:
        assert await wx.click("yes") == {}
        assert await wx.subscribe() == {}
        assert await wx.text("no") == {}  # the regex failed first: the filter is not asked
        assert (await wx.text("yes"))["Content"] == "ok"
    assert seen == ["TextMessage"]


async def test_message_and_event_take_a_filter_as_match() -> None:
    router = Router()
    vip: Filter[InboundMessage] = Filter(lambda m: m.openid == VIP)

    @router.message("image", match=vip)
    async def image(msg: InboundMessage, ctx: Context) -> str:
        return "vip image"

    @router.event("unsubscribe", match=~vip)
    async def left(msg: InboundMessage, ctx: Context) -> str:
        return "bye"

    async with HandlerClient(router) as wx:
        assert (await wx.push("image", openid=VIP))["Content"] == "vip image"
        assert await wx.push("image", openid=OTHER) == {}
        assert (await wx.push("unsubscribe", openid=OTHER))["Content"] == "bye"
        assert await wx.push("unsubscribe", openid=VIP) == {}


def test_a_filter_may_decorate_a_typed_function() -> None:
    @Filter
    def is_question(msg: TextMessage) -> bool:
        return msg.content.endswith("?")

    assert is_question(text("why?")) and not is_question(text("because"))
    assert repr(is_question) == "is_question"
