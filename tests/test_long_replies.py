"""Text replies over WeChat's 2,048 bytes reach the follower whole, through the real route."""

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.router import Router
from service.longtext import CUSTOM_BYTES, ELLIPSIS, PASSIVE_BYTES, cut, shortened, size, split
from service.replies import TextReply
from service.tools.cli import main
from service.tools.sandbox import Fault
from service.tools.simulate import decode_reply
from tests.conftest import OPENID
from tests.support import examples

CUSTOM_SEND = "/cgi-bin/message/custom/send"


def mixed(n_bytes: int) -> str:
    """Chinese, English, digits, emoji and line breaks, `n_bytes` or a little more."""
    parts = ["营业时间：周一至周六 9:00-17:00。", "Orders ship within 2 days! ",
             "欢迎光临刺猬食品店🦔，", "See https://example.com/a.b?c=1 for more. ", "第3条说明：",
             "价格 ¥12.50。\n", "👨‍👩‍👧 family packs, ", "（含税）\n\n"]
    out, i = "", 0
    while size(out) < n_bytes:
        out += parts[i % len(parts)]
        i += 1
    return out


def long_router(text: str) -> Router:
    router = Router()

    @router.text()
    async def answer(msg, ctx):
        return TextReply(text)
    return router


@pytest.fixture(params=[False, True], ids=["plain", "safe"])
def aes(request):
    return request.param


async def _post(client, push):
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200
    return r.content


def _texts(sent):
    assert all(m["touser"] == OPENID and m["msgtype"] == "text" for m in sent)
    return [m["text"]["content"] for m in sent]


@pytest.mark.parametrize("n_bytes", [2049, 3000, 7000])
async def test_a_long_reply_reaches_the_follower_whole_and_in_order(
        make_app, make_push, crypto, sandbox, aes, n_bytes):
    text = mixed(n_bytes)
    app = make_app(router=long_router(text))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        body = await _post(client, make_push("text", aes=aes, text="tell me everything"))
        passive = decode_reply(body, crypto=crypto)["Content"]
        assert await app.state.delivery.drain(5) == 0
    parts = _texts(sandbox.sent)
    assert size(passive) <= PASSIVE_BYTES
    assert parts and all(0 < size(p) <= CUSTOM_BYTES for p in parts)
    assert passive + "".join(parts) == text  # whole, nothing doubled, in order
    assert len(parts) == len(split(text[len(passive):], CUSTOM_BYTES))


async def test_a_retry_gets_the_same_passive_part_and_sends_nothing_again(
        make_app, make_push, sandbox, aes):
    text = mixed(3000)
    app = make_app(router=long_router(text))
    push = make_push("text", aes=aes, text="tell me everything")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        first = await _post(client, push)
        assert await app.state.delivery.drain(5) == 0
        sent = list(sandbox.sent)
        for _ in range(2):  # WeChat's two retries of the same push
            assert await _post(client, push) == first
        assert await app.state.delivery.drain(5) == 0
    assert sandbox.sent == sent and sandbox.calls[CUSTOM_SEND] == len(sent) == 1


async def test_without_customer_service_messages_the_reply_is_cut_with_an_ellipsis(
        make_app, make_push, crypto, sandbox, capsys):
    text = mixed(3000)
    sandbox.add_fault(Fault(path=CUSTOM_SEND, errcode=48001))  # an unverified account
    app = make_app(router=long_router(text))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        # The first long reply learns it: the rest is refused, logged.
        first = decode_reply(await _post(client, make_push("text", text="a")), crypto=crypto)
        assert await app.state.delivery.drain(5) == 0
        assert text.startswith(first["Content"]) and size(first["Content"]) <= PASSIVE_BYTES
        assert sandbox.calls[CUSTOM_SEND] == 1 and sandbox.sent == []
        out = capsys.readouterr().out
        assert "follow_up_failed" in out and "48001" in out
        # From then on: one passive reply ending in "…", nothing sent after it.
        push = make_push("text", text="b")
        body = await _post(client, push)
        second = decode_reply(body, crypto=crypto)["Content"]
        assert second.endswith(ELLIPSIS) and size(second) <= PASSIVE_BYTES
        assert text.startswith(second[:-1].rstrip())
        assert "long_reply_cut" in capsys.readouterr().out
        assert await _post(client, push) == body  # a retry: the same cut reply
        assert await app.state.delivery.drain(5) == 0
    assert sandbox.calls[CUSTOM_SEND] == 1


async def test_nickname_filled_in_counts(make_app, make_settings, make_push, crypto, sandbox,
                                         tmp_path):
    # 2,040 bytes as written; "刺猬宝宝" (12 bytes) for {nickname} takes it past 2,048.
    template = "Hi {nickname}! " + "好" * ((2040 - len("Hi ! ")) // 3)
    assert size(template.replace("{nickname}", "")) <= PASSIVE_BYTES
    path = tmp_path / "rules.yaml"
    path.write_text(f"keywords:\n  - {{name: long, equal: [long], replies: ['{template}']}}\n",
                    encoding="utf-8")
    app = make_app(settings=make_settings(WXHOOK_RULES=str(path)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        body = await _post(client, make_push("text", text="long"))
        passive = decode_reply(body, crypto=crypto)["Content"]
        assert await app.state.delivery.drain(5) == 0
    whole = template.replace("{nickname}", "刺猬宝宝")
    assert size(passive) <= PASSIVE_BYTES
    assert passive + "".join(_texts(sandbox.sent)) == whole


async def test_a_late_long_reply_goes_out_in_parts_in_order(make_app, make_settings, make_push,
                                                            sandbox):
    text = mixed(5000)
    router = Router()

    @router.text()
    async def slow(msg, ctx):
        await asyncio.sleep(0.5)  # past the 0.3 s deadline: delivered by custom/send
        return TextReply(text)

    app = make_app(settings=make_settings(WXHOOK_DEADLINE="0.3"), router=router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        assert await _post(client, make_push("text", text="slow")) == b"success"
        assert await app.state.delivery.drain(5) == 0
    parts = _texts(sandbox.sent)
    assert len(parts) >= 3 and all(size(p) <= CUSTOM_BYTES for p in parts)
    assert "".join(parts) == text


def test_rules_check_warns_about_long_texts_with_their_place(tmp_path, capsys):
    long = mixed(3000).replace("\n", " ").replace("'", "")
    path = tmp_path / "r.yaml"
    path.write_text(
        "keywords:\n"
        f"  - {{name: faq, equal: [faq], replies: ['{long}']}}\n"
        "  - name: all\n    equal: [all]\n    mode: reply_all\n"
        f"    replies: [short, '{long}{long}{long}']\n"
        f"subscribe: 'Hi {{nickname}}, {'欢' * 670}'\n", encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(path)])
    assert done.value.code == 0  # valid: warnings only
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"{path}: ok") and len(lines) == 4
    faq, = (x for x in lines if x.startswith(f"{path}:2: keywords[0] (faq).replies[0]: warning: "
                                            "a text of "))
    assert "as a passive reply of up to 2,048 bytes and about 1 customer-service" in faq
    assert "48001" in faq and ELLIPSIS in faq
    later, = (x for x in lines if x.startswith(f"{path}:6: keywords[1] (all).replies[1]: "
                                              "warning: a text of "))
    assert "about 5 customer-service messages of up to 2,048 bytes" in later
    assert "45047" in later
    greeting, = (x for x in lines if x.startswith(f"{path}:7: subscribe.reply: warning: "))
    assert "with a 64-byte name" in greeting


def test_rules_check_says_nothing_about_texts_that_fit(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(f"default: {{reply: '{'好' * 682}', once_per: 0}}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(path)])
    assert done.value.code == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"{path}: ok")


# -- where a text is cut ------------------------------------------------------------------

_ANY = st.text(st.characters(blacklist_categories=("Cs",)), max_size=3000)
_WRITTEN = st.lists(st.sampled_from(["营业", "时间", "。", "！", "?", " ", "\n", "ab", "3.14",
                                     "🦔", "👨‍👩‍👧", "é", "e\u0301"]), max_size=1500).map("".join)


@settings(max_examples=examples(200), deadline=None)
@given(st.one_of(_ANY, _WRITTEN), st.sampled_from([4, 7, 64, 2048]))
def test_parts_are_whole_in_order_and_within_the_limit(text, limit):
    parts = split(text, limit)
    assert "".join(parts) == text
    assert all(0 < size(p) <= limit for p in parts)
    short = shortened(text, max(limit, 8))
    assert size(short) <= max(limit, 8)


@pytest.mark.parametrize(("text", "head"), [
    ("第一行\n" + "好" * 700, "第一行\n"),                 # a line break: too early, not used
    ("好" * 400 + "\n" + "好" * 400, "好" * 400 + "\n"),     # a line break in the second half
    ("好" * 400 + "。" + "好" * 400, "好" * 400 + "。"),     # a sentence end
    ("a" * 1500 + ". " + "b" * 1000, "a" * 1500 + ". "),    # ". " ends a sentence
    ("a" * 1500 + " " + "3.14" * 300, "a" * 1500 + " "),    # "3.14" does not: the space does
    ("好" * 1000, "好" * 682),                                # no break: whole characters
    ("x" + "👨‍👩‍👧" * 200, None),                              # never inside an emoji sequence
])
def test_cut_prefers_a_line_then_a_sentence_then_a_space(text, head):
    got, rest = cut(text, PASSIVE_BYTES)
    assert got + rest == text and size(got) <= PASSIVE_BYTES
    if head is None:
        assert got.endswith("👧") and rest.startswith("👨")
    elif head.startswith("第一行"):
        assert got == "第一行\n" + "好" * ((PASSIVE_BYTES - size("第一行\n")) // 3)
    else:
        assert got == head

