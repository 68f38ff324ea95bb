"""A rules file answering through the real /wechat route, plain and safe mode."""

import asyncio

import httpx
import pytest

from tests.conftest import OPENID
from wxhook.tools.simulate import decode_reply

RULES = """\
subscribe:
  reply: "Hi {nickname}, welcome aboard!"
  anonymous: "Hi, welcome aboard!"
  scenes:
    fair2026: "Thanks for visiting our booth, {nickname}!"
keywords:
  - name: hours
    equal: ["hours", "营业时间"]
    contain: ["open"]
    regex: ["^order\\\\s+#?\\\\d+$"]
    replies: ["We are open 9 to 17."]
  - name: shadowed
    equal: ["when open"]          # "open" above comes first in file order
    replies: ["never"]
  - name: named
    equal: [ME]                   # the file's case does not matter either
    replies: [{text: "So is this; {nickname} works in any text."}]
  - name: news
    equal: [news]
    replies: [{news: [{title: "Hi {nickname}", description: "d", url: "https://e.com/a",
                       picurl: "https://e.com/p.jpg"}]}]
  - name: image
    equal: [image]
    replies: [{image: {media_id: IMG1}}]
  - name: voice
    equal: [voice]
    replies: [{voice: {media_id: VOI1}}]
  - name: video
    equal: [video]
    replies: [{video: {media_id: VID1, title: "t", description: "d"}}]
  - name: music
    equal: [music]
    replies: [{music: {thumb_media_id: TH1, title: "song", musicurl: "https://e.com/m.mp3"}}]
  - name: pick
    equal: [pick]
    replies: [a, b, c]
  - name: all
    equal: [all]
    mode: reply_all
    replies: ["one", {text: "two, {nickname}"}, {image: {media_id: IMG3}}]
default:
  reply: "Got your message; we will answer soon."
  once_per: 3600
clicks:
  ABOUT: "We make hedgehog food."
"""

OTHER = "oSandboxOtherFollower0000002"


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


@pytest.fixture
def rules_app(make_app, make_settings, rules_file):
    return make_app(settings=make_settings(WXHOOK_RULES=str(rules_file)))


@pytest.fixture
async def rclient(rules_app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rules_app),
                                 base_url="http://testserver") as c:
        yield c


@pytest.fixture(params=[False, True], ids=["plain", "safe"])
def aes(request):
    return request.param


async def _send(rclient, make_push, crypto, kind, *, aes, **kw):
    push = make_push(kind, aes=aes, **kw)
    r = await rclient.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200
    if aes and r.content != b"success":
        assert b"<Encrypt>" in r.content
    return decode_reply(r.content, crypto=crypto)


@pytest.mark.parametrize(("text", "want"), [
    ("hours", "We are open 9 to 17."),              # equal
    ("  HOURS \n", "We are open 9 to 17."),         # trimmed, case-insensitive
    ("营业时间", "We are open 9 to 17."),
    ("are you OPEN today?", "We are open 9 to 17."),  # contain, anywhere
    ("when open", "We are open 9 to 17."),         # the first rule in file order wins
    ("Order #1234", "We are open 9 to 17."),       # regex, case-insensitive
    ("me", "So is this; 刺猬宝宝 works in any text."),
])
async def test_keywords_match_equal_contain_regex(rclient, make_push, crypto, aes, text, want):
    f = await _send(rclient, make_push, crypto, "text", aes=aes, text=text)
    assert f["MsgType"] == "text"
    assert f["Content"] == want


@pytest.mark.parametrize(("text", "fields"), [
    ("news", {"MsgType": "news", "Title": "Hi 刺猬宝宝", "Url": "https://e.com/a",
              "PicUrl": "https://e.com/p.jpg"}),
    ("image", {"MsgType": "image", "MediaId": "IMG1"}),
    ("voice", {"MsgType": "voice", "MediaId": "VOI1"}),
    ("video", {"MsgType": "video", "MediaId": "VID1", "Title": "t"}),
    ("music", {"MsgType": "music", "ThumbMediaId": "TH1", "MusicUrl": "https://e.com/m.mp3"}),
])
async def test_every_reply_type(rclient, make_push, crypto, aes, text, fields):
    f = await _send(rclient, make_push, crypto, "text", aes=aes, text=text)
    assert {k: f.get(k) for k in fields} == fields


async def test_random_one_answers_one_of_the_replies(rclient, make_push, crypto, aes):
    seen = {(await _send(rclient, make_push, crypto, "text", aes=aes, text="pick"))["Content"]
            for _ in range(40)}
    assert seen == {"a", "b", "c"}  # each has a 2/3 chance per try to be missed: 40 tries


async def test_reply_all_first_passive_then_customer_service_in_order(
        rclient, make_push, crypto, aes, sandbox):
    f = await _send(rclient, make_push, crypto, "text", aes=aes, text="all")
    assert f["Content"] == "one"
    for _ in range(100):
        if len(sandbox.sent) >= 2:
            break
        await asyncio.sleep(0.02)
    assert sandbox.sent == [
        {"touser": OPENID, "msgtype": "text", "text": {"content": "two, 刺猬宝宝"}},
        {"touser": OPENID, "msgtype": "image", "image": {"media_id": "IMG3"}},
    ]


async def test_default_reply_once_per_follower(rclient, make_push, crypto, aes):
    first = await _send(rclient, make_push, crypto, "text", aes=aes, text="something else")
    assert first["Content"] == "Got your message; we will answer soon."
    again = await _send(rclient, make_push, crypto, "image", aes=aes)
    assert again == {}  # "success": the hour has not passed
    other = await _send(rclient, make_push, crypto, "voice", aes=aes, openid=OTHER)
    assert other["Content"] == "Got your message; we will answer soon."
    # A keyword still answers every time.
    assert (await _send(rclient, make_push, crypto, "text", aes=aes, text="hours"))["Content"]


async def test_default_once_per_zero_answers_every_time(make_app, make_settings, tmp_path,
                                                        make_push, crypto):
    path = tmp_path / "r.yaml"
    path.write_text("default: {reply: 'Noted.', once_per: 0}\n")
    app = make_app(settings=make_settings(WXHOOK_RULES=str(path)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        for _ in range(3):
            assert (await _send(c, make_push, crypto, "text", aes=False))["Content"] == "Noted."


async def test_subscribe_greets_by_name_and_scene(rclient, make_push, crypto, aes):
    f = await _send(rclient, make_push, crypto, "subscribe", aes=aes)
    assert f["Content"] == "Hi 刺猬宝宝, welcome aboard!"
    f = await _send(rclient, make_push, crypto, "subscribe", aes=aes,
                    event_key="qrscene_fair2026")
    assert f["Content"] == "Thanks for visiting our booth, 刺猬宝宝!"
    f = await _send(rclient, make_push, crypto, "SCAN", aes=aes, event_key="fair2026")
    assert f["Content"] == "Thanks for visiting our booth, 刺猬宝宝!"
    # A scene with no greeting of its own: the plain one; SCAN of it: nothing (and the
    # built-in greeting stays replaced).
    f = await _send(rclient, make_push, crypto, "subscribe", aes=aes, event_key="qrscene_x")
    assert f["Content"] == "Hi 刺猬宝宝, welcome aboard!"
    assert await _send(rclient, make_push, crypto, "SCAN", aes=aes, event_key="x") == {}


async def test_no_name_known_anonymous_and_tidy(rclient, make_push, crypto, sandbox):
    sandbox.empty_nicknames = True
    f = await _send(rclient, make_push, crypto, "subscribe", aes=False, openid=OTHER)
    assert f["Content"] == "Hi, welcome aboard!"
    f = await _send(rclient, make_push, crypto, "SCAN", aes=False, openid=OTHER,
                    event_key="fair2026")
    assert f["Content"] == "Thanks for visiting our booth!"


async def test_name_looked_up_only_when_the_reply_uses_it(rclient, make_push, crypto, sandbox):
    await _send(rclient, make_push, crypto, "text", aes=False, text="hours", openid=OTHER)
    assert sandbox.calls["/cgi-bin/user/info"] + sandbox.calls["/cgi-bin/user/info/batchget"] == 0
    await _send(rclient, make_push, crypto, "text", aes=False, text="me", openid=OTHER)
    assert sandbox.calls["/cgi-bin/user/info"] + sandbox.calls["/cgi-bin/user/info/batchget"] == 1


async def test_click(rclient, make_push, crypto, aes):
    f = await _send(rclient, make_push, crypto, "CLICK", aes=aes, event_key="ABOUT")
    assert f["Content"] == "We make hedgehog food."
    assert await _send(rclient, make_push, crypto, "CLICK", aes=aes, event_key="NOPE") == {}


async def test_push_log_names_the_rule(rclient, make_push, crypto, capsys):
    await _send(rclient, make_push, crypto, "text", aes=False, text="Order 77")
    await _send(rclient, make_push, crypto, "CLICK", aes=False, event_key="ABOUT")
    pushes = [line for line in capsys.readouterr().out.splitlines() if " push " in line]
    assert "handler=rules:hours" in pushes[0]
    assert "handler=rules:click:ABOUT" in pushes[1]


async def test_code_handlers_come_first_and_builtins_last(make_app, make_settings, tmp_path,
                                                          make_push, crypto):
    from wxhook.defaults import default_router
    from wxhook.replies import TextReply
    from wxhook.router import Context, Router
    from wxhook.rules_router import RulesAnswerer
    from wxhook.server.rules_source import RulesSource
    from wxhook.server.store.memory import MemoryStore

    path = tmp_path / "r.yaml"
    path.write_text("keywords: [{equal: [hours, help2], replies: [from rules]}]\n")
    mine = Router()

    @mine.text(equal="hours")
    async def hours(msg, ctx: Context):
        return TextReply("from code")

    source = RulesSource(str(path))
    answerer = RulesAnswerer(source.current, store=MemoryStore(), namespace="t:")
    router = default_router(rules=answerer)
    router.routes.insert(0, mine)
    app = make_app(router=router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        assert (await _send(c, make_push, crypto, "text", aes=False, text="hours"))[
            "Content"] == "from code"
        assert (await _send(c, make_push, crypto, "text", aes=False, text="help2"))[
            "Content"] == "from rules"
        assert "help" in (await _send(c, make_push, crypto, "text", aes=False, text="help"))[
            "Content"]
        # No `subscribe` in this file: the built-in greeting still answers.
        assert (await _send(c, make_push, crypto, "subscribe", aes=False))[
            "Content"] == "Welcome, 刺猬宝宝!"


def _answering_then(then, rules_file):
    """A router whose handler takes the rules' answer to "all", then does `then`."""
    from wxhook.router import Router
    from wxhook.rules_router import RulesAnswerer
    from wxhook.server.rules_source import RulesSource
    from wxhook.server.store.memory import MemoryStore

    answerer = RulesAnswerer(RulesSource(str(rules_file)).current, store=MemoryStore(),
                             namespace="t:")
    router = Router()

    @router.text()
    async def handler(msg, ctx):
        reply = await answerer.on_message(msg, ctx)
        return await then(reply)
    return router


async def test_reply_all_sends_nothing_more_when_the_first_reply_never_goes_out(
        make_app, rules_file, make_push, crypto, sandbox):
    async def fail(reply):
        raise RuntimeError("the handler fails after the rules answered")

    app = make_app(router=_answering_then(fail, rules_file))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        assert await _send(c, make_push, crypto, "text", aes=False, text="all") == {}
    assert await app.state.delivery.drain(5) == 0
    assert sandbox.sent == []  # not "two" and the image without "one"


async def test_reply_all_late_first_reply_goes_out_before_the_others(
        make_app, make_settings, rules_file, make_push, crypto, sandbox):
    async def slow(reply):
        await asyncio.sleep(0.5)  # past the 0.3 s deadline: delivered late
        return reply

    app = make_app(settings=make_settings(WXHOOK_DEADLINE="0.3"),
                   router=_answering_then(slow, rules_file))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        assert await _send(c, make_push, crypto, "text", aes=False, text="all") == {}
        for _ in range(200):
            if len(sandbox.sent) >= 3:
                break
            await asyncio.sleep(0.02)
    assert [m.get("text", m.get("image")) for m in sandbox.sent] == [
        {"content": "one"}, {"content": "two, 刺猬宝宝"}, {"media_id": "IMG3"}]


async def test_readyz_shows_the_rules_in_force(rclient, rules_app):
    r = await rclient.get("/readyz?verbose")
    rules = r.json()["checks"]["rules"]
    assert rules["ok"] is True
    assert rules["version"] == rules_app.state.rules.current().rules.version
    assert len(rules["version"]) == 12


async def test_reply_all_stops_and_counts_when_wechat_refuses(rclient, rules_app, make_push,
                                                              crypto, sandbox, capsys):
    from wxhook.tools.sandbox import Fault

    sandbox.add_fault(Fault(path="/cgi-bin/message/custom/send", errcode=45047))
    f = await _send(rclient, make_push, crypto, "text", aes=False, text="all")
    assert f["Content"] == "one"
    assert await rules_app.state.delivery.drain(5) == 0
    assert sandbox.sent == []
    assert sandbox.calls["/cgi-bin/message/custom/send"] == 1  # not the third after a refusal
    sample = rules_app.state.metrics.registry.get_sample_value
    assert sample("wxhook_follow_ups_total", {"account": "default", "result": "failed"}) == 2
    assert "follow_up_failed" in capsys.readouterr().out


@pytest.mark.redis
async def test_default_once_per_follower_across_instances(redis_url, make_app, make_settings,
                                                          rules_file, make_push, crypto):
    from wxhook.server.metrics import Metrics
    from wxhook.server.store.redis import RedisStore

    settings = make_settings(WXHOOK_RULES=str(rules_file))
    answers = []
    for _ in range(2):  # two instances sharing one Redis, each with its own push
        store = RedisStore(redis_url, metrics=Metrics())
        app = make_app(settings=settings, store=store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            answers.append(await _send(c, make_push, crypto, "text", aes=False, text="hm"))
        await store.aclose()
    assert answers[0]["Content"] == "Got your message; we will answer soon."
    assert answers[1] == {}
