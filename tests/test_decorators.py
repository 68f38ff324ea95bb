"""handlers.decorators: one typed decorator per push WeChat sends, each firing for its push
and no other, through the real signed /wechat route (HandlerClient)."""

from __future__ import annotations

from typing import Any

import pytest
from mypy import api as mypy_api

from handlers import Context, NoReply, Router, TextMessage, TextReply
from handlers.testing import HandlerClient
from tests.support import ROOT

# Every push WeChat sends: name -> (kind, event_key, fields)
PUSHES: dict[str, tuple[str, str, dict[str, str]]] = {
    "text": ("text", "", {}),
    "image": ("image", "", {}),
    "voice": ("voice", "", {"Recognition": "你好"}),
    "video": ("video", "", {}),
    "shortvideo": ("shortvideo", "", {}),
    "location": ("location", "", {}),
    "link": ("link", "", {}),
    "subscribe": ("subscribe", "", {}),
    "subscribe_qr": ("subscribe", "qrscene_fair", {"Ticket": "T"}),
    "unsubscribe": ("unsubscribe", "", {}),
    "scan": ("SCAN", "fair", {"Ticket": "T"}),
    "click": ("CLICK", "K1", {}),
    "view": ("VIEW", "https://example.com/a", {"MenuId": "7"}),
    "view_miniprogram": ("view_miniprogram", "pages/index", {"MenuId": "7"}),
    "location_report": ("LOCATION", "", {"Latitude": "23.1", "Longitude": "113.3",
                                         "Precision": "30"}),
    "scancode_push": ("scancode_push", "S1", {"ScanCodeInfo/ScanType": "qrcode",
                                              "ScanCodeInfo/ScanResult": "R"}),
    "scancode_waitmsg": ("scancode_waitmsg", "S1", {"ScanCodeInfo/ScanType": "qrcode",
                                                    "ScanCodeInfo/ScanResult": "R"}),
    "pic_sysphoto": ("pic_sysphoto", "P1", {"SendPicsInfo/Count": "1"}),
    "pic_photo_or_album": ("pic_photo_or_album", "P1", {"SendPicsInfo/Count": "1"}),
    "pic_weixin": ("pic_weixin", "P1", {"SendPicsInfo/Count": "1"}),
    "location_select": ("location_select", "L1", {"SendLocationInfo/Location_X": "23",
                                                  "SendLocationInfo/Poiname": "Here"}),
    "template_job_finish": ("TEMPLATESENDJOBFINISH", "", {"MsgID": "9", "Status": "success"}),
    "mass_job_finish": ("MASSSENDJOBFINISH", "", {"MsgID": "10", "Status": "sendsuccess",
                                                  "SentCount": "75"}),
}

# decorator -> the pushes it fires for, and what its handler reads off the narrowed type
# (an attribute only that class has: a wrong class would fail, not answer).
DECORATORS: dict[str, tuple[set[str], str]] = {
    "text": ({"text"}, "content"),
    "image": ({"image"}, "pic_url"),
    "voice": ({"voice"}, "recognition"),
    "video": ({"video"}, "thumb_media_id"),
    "shortvideo": ({"shortvideo"}, "thumb_media_id"),
    "location": ({"location"}, "label"),
    "link": ({"link"}, "url"),
    "subscribe": ({"subscribe", "subscribe_qr"}, "ticket"),
    "unsubscribe": ({"unsubscribe"}, "event_name"),
    "scan": ({"subscribe_qr", "scan"}, "ticket"),
    "click": ({"click"}, "menu_id"),
    "view": ({"view"}, "menu_id"),
    "view_miniprogram": ({"view_miniprogram"}, "menu_id"),
    "location_report": ({"location_report"}, "precision"),
    "scancode_push": ({"scancode_push"}, "scan_result"),
    "scancode_waitmsg": ({"scancode_waitmsg"}, "scan_result"),
    "pic_sysphoto": ({"pic_sysphoto"}, "count"),
    "pic_photo_or_album": ({"pic_photo_or_album"}, "count"),
    "pic_weixin": ({"pic_weixin"}, "count"),
    "location_select": ({"location_select"}, "poiname"),
    "template_job_finish": ({"template_job_finish"}, "status"),
    "mass_job_finish": ({"mass_job_finish"}, "sent_count"),
}


async def send(wx: HandlerClient, name: str) -> dict[str, str]:
    kind, key, fields = PUSHES[name]
    return await wx.push(kind, event_key=key, fields=fields, text="hi")


@pytest.mark.parametrize("decorator", sorted(DECORATORS))
async def test_each_decorator_fires_for_its_push_only(decorator: str) -> None:
    fires_for, field = DECORATORS[decorator]
    router = Router()

    async def handler(msg: Any, ctx: Context) -> str:
        return f"{type(msg).__name__}:{getattr(msg, field)}"

    getattr(router, decorator)()(handler)
    async with HandlerClient(router) as wx:
        answered = {name: (await send(wx, name)).get("Content") for name in PUSHES}
    assert {name for name, content in answered.items() if content} == fires_for
    for name in fires_for:
        assert answered[name] not in (None, ""), name


async def test_the_handler_gets_the_pushed_fields() -> None:
    router = Router()

    @router.location_report()
    async def where(msg: Any, ctx: Context) -> str:
        return f"{msg.latitude},{msg.longitude},{msg.precision}"

    @router.scancode_waitmsg()
    async def scanned(msg: Any, ctx: Context) -> str:
        return f"{msg.scan_type}:{msg.scan_result}"

    @router.mass_job_finish()
    async def mass(msg: Any, ctx: Context) -> str:
        return f"{msg.status}:{msg.sent_count}"

    async with HandlerClient(router) as wx:
        assert (await send(wx, "location_report"))["Content"] == "23.1,113.3,30.0"
        assert (await send(wx, "scancode_waitmsg"))["Content"] == "qrcode:R"
        assert (await send(wx, "mass_job_finish"))["Content"] == "sendsuccess:75"


async def test_subscribe_fires_for_every_follower_and_scene_narrows_it() -> None:
    router = Router()

    @router.subscribe(scene="fair")
    async def fair(msg: Any, ctx: Context) -> str:
        return f"fair:{msg.scene}"

    @router.subscribe()
    async def anyone(msg: Any, ctx: Context) -> str:
        return f"any:{msg.scene}"

    async with HandlerClient(router) as wx:
        assert (await wx.subscribe(scene="fair"))["Content"] == "fair:fair"
        assert (await wx.subscribe(scene="other"))["Content"] == "any:other"
        assert (await wx.subscribe())["Content"] == "any:None"
        assert await wx.scan("fair") == {}  # SCAN is not a subscribe


@pytest.mark.parametrize(("decorator", "push", "keys"), [
    ("click", "click", ("K1",)), ("view", "view", ("https://example.com/a",)),
    ("view_miniprogram", "view_miniprogram", ("pages/index",)),
    ("scancode_push", "scancode_push", ("S1",)), ("pic_weixin", "pic_weixin", ("P1",)),
    ("location_select", "location_select", ("L1",)),
])
async def test_menu_decorators_take_the_buttons_keys(decorator: str, push: str,
                                                     keys: tuple[str, ...]) -> None:
    router = Router()

    async def mine(msg: Any, ctx: Context) -> str:
        return "mine"

    async def other(msg: Any, ctx: Context) -> str:
        return "other"

    getattr(router, decorator)("NOT-THIS-ONE")(other)
    getattr(router, decorator)(*keys)(mine)
    async with HandlerClient(router) as wx:
        assert (await send(wx, push))["Content"] == "mine"


async def test_a_regex_match_reaches_the_handler_with_its_groups() -> None:
    router = Router()
    seen: list[object] = []

    @router.text(regex=r"^order\s+#?(?P<number>\d+)(?:\s+(\w+))?$")
    async def order(msg: TextMessage, ctx: Context) -> str | None:
        assert ctx.match is not None
        return f"{ctx.match['number']}|{ctx.match.group(2)}|{ctx.match.group(0)}"

    @router.text(regex=r"^(?P<word>\w+)!$")
    async def declines(msg: TextMessage, ctx: Context) -> None:
        seen.append(ctx.match and ctx.match["word"])

    @router.text(equal="hi!")
    async def plain(msg: TextMessage, ctx: Context) -> None:
        seen.append(ctx.match)

    @router.text(equal=["hours", "hi!"], regex=r"^nothing-here$")
    async def hours(msg: TextMessage, ctx: Context) -> str:
        seen.append(ctx.match)
        return "hours"

    async with HandlerClient(router) as wx:
        # Searched in the trimmed text, case-insensitively; the match is of that text.
        assert (await wx.text("  ORDER #42 red ")).get("Content") == "42|red|ORDER #42 red"
        assert (await wx.text("order 7")).get("Content") == "7|None|order 7"
        # Routes without a regex, or matched by `equal`, get no match, not an earlier route's.
        assert (await wx.text("hi!")).get("Content") == "hours"
    assert seen == ["hi", None, None]


@pytest.mark.parametrize(("answer", "expect"), [
    ("plain text", {"MsgType": "text", "Content": "plain text"}),
    (TextReply("a reply"), {"MsgType": "text", "Content": "a reply"}),
    (None, {"MsgType": "text", "Content": "fallback"}),
    ("", {"MsgType": "text", "Content": "fallback"}),   # an empty text says nothing
    (NoReply(), {}),                                     # answered: the search stops
])
async def test_a_handler_may_answer_a_str_a_reply_or_nothing(answer: object,
                                                           expect: dict[str, str]) -> None:
    router = Router()

    @router.text()
    async def first(msg: TextMessage, ctx: Context) -> Any:
        return answer

    @router.text()
    async def fallback(msg: TextMessage, ctx: Context) -> str:
        return "fallback"

    for aes in (False, True):
        async with HandlerClient(router, aes=aes) as wx:
            got = await wx.text("x")
            assert {k: got.get(k) for k in got if k in ("MsgType", "Content")} == expect


async def test_a_handler_answering_another_type_is_a_logged_failure(capsys: Any) -> None:
    router = Router()

    @router.text()
    async def wrong(msg: TextMessage, ctx: Context) -> Any:
        return 42

    async with HandlerClient(router) as wx:
        assert await wx.text("x") == {}
    out = capsys.readouterr().out
    assert "handler_failed" in out and "returned a int; return a str, a Reply or None" in out


TYPED = '''
from handlers import (Context, Filter, InboundMessage, MenuEvent, Reply, Router,
                      SubscribeEvent, TextMessage, TextReply)

router = Router()
vip: Filter[InboundMessage] = Filter(lambda m: m.openid.startswith("oVIP"))
long: Filter[TextMessage] = Filter(lambda m: len(m.content) > 3)
key_a: Filter[MenuEvent] = Filter(lambda m: m.event_key == "A")


@router.subscribe()
async def ok_subscribe(msg: SubscribeEvent, ctx: Context) -> str | None:
    return msg.scene


@router.subscribe(scene="fair", when=vip)
async def ok_wider(msg: InboundMessage, ctx: Context) -> Reply:
    return TextReply(msg.openid)


@router.text(when=vip & long)
async def ok_text(msg: TextMessage, ctx: Context) -> str:
    return msg.content


@router.click("A", when=~vip | key_a)
async def ok_click(msg: MenuEvent, ctx: Context) -> None:
    return None


@router.subscribe()  # error
async def bad_type(msg: TextMessage, ctx: Context) -> str:
    return msg.content


@router.text()  # error
async def bad_answer(msg: TextMessage, ctx: Context) -> int:
    return 1


@router.click(when=long)  # error
async def bad_filter(msg: MenuEvent, ctx: Context) -> str:
    return ""


@router.text()
async def bad_field(msg: TextMessage, ctx: Context) -> str:
    return msg.event_key  # error


@router.click(when=long & vip)  # error
async def bad_composed(msg: MenuEvent, ctx: Context) -> str:
    return ""


@router.click(when=~long | vip)  # error
async def bad_inverted(msg: MenuEvent, ctx: Context) -> str:
    return ""
'''


@pytest.mark.slow
def test_mypy_strict_takes_matching_handlers_and_rejects_the_rest(tmp_path: Any,
                                                                 monkeypatch: Any) -> None:
    path = tmp_path / "typed_handlers.py"
    path.write_text(TYPED)
    monkeypatch.chdir(ROOT)  # the project's mypy cache and packages
    out, err, _ = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                str(path)])
    # By file name: mypy's cache may name the directory of an earlier run with this file.
    lines = sorted({int(line.split(":")[1]) for line in out.splitlines()
                    if line.split(":")[0].endswith("/typed_handlers.py") and ": error:" in line})
    expected = [n for n, line in enumerate(TYPED.splitlines(), 1) if line.endswith("# error")]
    assert len(expected) == 6 and lines == expected, out + err
