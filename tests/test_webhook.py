"""The /wechat route as WeChat and a follower see it, against the in-process sandbox."""

import asyncio
import secrets
import time

import httpx
import orjson
import pytest
from wechatpy.crypto import WeChatCrypto

from tests.conftest import OPENID
from tests.support import AES_KEY, SANDBOX_APP_ID, TOKEN, dirty_json
from wxhook.errors import DecryptError
from wxhook.replies import SUCCESS
from wxhook.server.crypto import MessageCrypto
from wxhook.server.signature import sign
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push


def _q(ts=None, nonce="4375", **extra):
    ts = str(int(time.time()) if ts is None else ts)
    return {"signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce, **extra}


# -- URL verification -----------------------------------------------------------------------

async def test_get_echoes_echostr_exactly(client):
    r = await client.get("/wechat", params=_q(echostr="4375120948345356249"))
    assert r.status_code == 200
    assert r.content == b"4375120948345356249"
    assert r.headers["content-type"].startswith("text/plain")


async def test_get_echo_is_never_sniffed_as_html(client):
    r = await client.get("/wechat", params=_q(echostr="<html><script>alert(1)</script>"))
    assert r.status_code == 200 and r.content == b"<html><script>alert(1)</script>"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("params", [
    {**_q(echostr="123"), "signature": "0" * 40},
    {k: v for k, v in _q(echostr="123").items() if k != "signature"},
    _q(),  # no echostr
    _q(ts=int(time.time()) - 3600, echostr="123"),
])
async def test_get_refuses_without_echo(client, params):
    r = await client.get("/wechat", params=params)
    assert 400 <= r.status_code < 500
    assert b"123" not in r.content


@pytest.mark.parametrize("value", ["é" * 40, "%E4%BD%A0" * 13, "%FF%FE", "İ" * 40, "ß",
                                   "%C0%80" * 20, "\u0661" * 40, "%00" * 40])
async def test_a_non_ascii_signature_is_403_not_500(client, crypto, value):
    # compare_digest raises TypeError on a non-ASCII str: the comparison is on bytes.
    ts, nonce = str(int(time.time())), "4375"
    good = sign(TOKEN, ts, nonce)
    raw = f"signature={{}}&timestamp={ts}&nonce={nonce}"
    r = await client.get("/wechat?" + raw.format(value) + "&echostr=123")
    assert r.status_code == 403 and b"123" not in r.content
    r = await client.post("/wechat?" + raw.format(value), content=push_xml("text", openid=OPENID))
    assert r.status_code == 403
    encrypt = crypto.encrypt(push_xml("text", openid=OPENID))
    body = f"<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    r = await client.post(f"/wechat?{raw.format(good)}&encrypt_type=aes&msg_signature={value}",
                          content=body)
    assert r.status_code == 403


# -- the three modes --------------------------------------------------------------------------

def _theirs():
    return WeChatCrypto(TOKEN, AES_KEY, SANDBOX_APP_ID)


async def test_plaintext_subscribe_greets_the_follower(client, make_push, sandbox):
    push = make_push("subscribe")
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200
    f = decode_reply(r.content, crypto=None)
    assert f["Content"] == "Welcome, 刺猬宝宝!"
    assert f["ToUserName"] == OPENID and f["FromUserName"] == "gh_sandbox000001"
    assert f["MsgType"] == "text"


async def test_safe_mode_reply_is_encrypted_and_decrypts_with_wechatpy(client, make_push):
    push = make_push("subscribe", aes=True)
    assert b"<FromUserName>" not in push.body  # safe mode: only ToUserName and Encrypt
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200 and b"<Encrypt>" in r.content
    body = r.text
    ts = body.split("<TimeStamp>")[1].split("</TimeStamp>")[0]
    nonce = body.split("<Nonce><![CDATA[")[1].split("]]>")[0]
    sig = body.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    plain = _theirs().decrypt_message(body, sig, ts, nonce)  # checks MsgSignature too
    assert "Welcome, 刺猬宝宝!" in plain and OPENID in plain


async def test_compatible_mode_push_with_plain_and_encrypted_fields(client, crypto):
    xml = push_xml("subscribe", openid=OPENID)
    encrypt = crypto.encrypt(xml)
    body = xml.replace(b"</xml>", f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode())
    ts, nonce = str(int(time.time())), "777"
    params = {**_q(ts=ts, nonce=nonce), "openid": OPENID, "encrypt_type": "aes",
              "msg_signature": sign(TOKEN, ts, nonce, encrypt)}
    r = await client.post("/wechat", params=params, content=body)
    assert r.status_code == 200
    assert decode_reply(r.content, crypto=crypto)["Content"] == "Welcome, 刺猬宝宝!"


async def test_push_encrypted_by_wechatpy_is_served(client):
    ts, nonce = str(int(time.time())), "9911"
    xml = push_xml("subscribe", openid=OPENID).decode()
    env = _theirs().encrypt_message(xml, nonce, ts)
    encrypt = env.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    msg_sig = env.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    body = f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{encrypt}]]>" \
           "</Encrypt></xml>"
    params = {**_q(ts=ts, nonce=nonce), "encrypt_type": "aes", "msg_signature": msg_sig}
    r = await client.post("/wechat", params=params, content=body)
    assert r.status_code == 200 and b"<Encrypt>" in r.content


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
async def test_the_message_mode_decides_which_pushes_are_accepted(make_app, make_settings,
                                                                  make_push, mode):
    app = make_app(settings=make_settings(WXHOOK_MESSAGE_MODE=mode))
    accepted = {"plain": (True, False), "compat": (True, True), "safe": (False, True)}[mode]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as c:
        for aes, ok in zip((False, True), accepted, strict=True):
            push = make_push("subscribe", aes=aes)
            r = await c.post("/wechat", params=push.params, content=push.body)
            if ok:
                assert r.status_code == 200 and (b"<Encrypt>" in r.content) == aes
            else:
                assert 400 <= r.status_code < 500 and r.content.startswith(b"mode")


async def test_a_plaintext_try_never_answers_an_encrypted_one(client, make_push, crypto):
    # Same MsgId, once in plaintext and once encrypted: one message, so the encrypted try
    # gets the plaintext try's reply sealed, never the plaintext bytes (WeChat, in safe mode,
    # cannot use them). The other way round: tests/test_replay.py.
    for aes in (False, True):
        push = make_push("text", text="help", msg_id=6054768590064713799, aes=aes)
        r = await client.post("/wechat", params=push.params, content=push.body)
        assert r.status_code == 200 and (b"<Encrypt>" in r.content) == aes
        assert "help" in decode_reply(r.content, crypto=crypto)["Content"]


async def test_key_rotation_answers_each_push_under_the_key_that_opened_it(
        make_app, make_settings, make_push):
    old = MessageCrypto(TOKEN, [AES_KEY], SANDBOX_APP_ID)
    new = MessageCrypto(TOKEN, ["B" * 43], SANDBOX_APP_ID)
    app = make_app(settings=make_settings(WECHAT_ENCODING_AES_KEY=f"{'B' * 43},{AES_KEY}"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as c:
        for sealer, other in ((old, new), (new, old)):
            push = sign_push(push_xml("text", openid=OPENID, text="help"), token=TOKEN,
                             openid=OPENID, crypto=sealer)
            first = await c.post("/wechat", params=push.params, content=push.body)
            retry = await c.post("/wechat", params=push.params, content=push.body)
            assert retry.content == first.content  # the dedup replay: same key, same bytes
            assert "help" in decode_reply(first.content, crypto=sealer)["Content"]
            with pytest.raises(DecryptError):
                decode_reply(first.content, crypto=other)


# -- greetings ----------------------------------------------------------------------------------

async def test_qr_code_subscribe_and_scan_are_greeted(client, make_push):
    for push in (make_push("subscribe", event_key="qrscene_42"), make_push("SCAN", event_key="42")):
        r = await client.post("/wechat", params=push.params, content=push.body)
        assert decode_reply(r.content, crypto=None)["Content"] == "Welcome, 刺猬宝宝!"


async def test_empty_nickname_gives_plain_welcome(client, make_push, sandbox):
    sandbox.empty_nicknames = True  # user/info since 2021-12-27
    push = make_push("subscribe", openid="oNoNameFollower0000000000001")
    r = await client.post("/wechat", params=push.params, content=push.body)
    content = decode_reply(r.content, crypto=None)["Content"]
    assert content == "Welcome!"


async def test_failed_lookup_still_greets_in_time(client, make_push, sandbox):
    push = make_push("subscribe", openid="!invalid-openid")  # sandbox answers 40003
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert decode_reply(r.content, crypto=None)["Content"] == "Welcome!"


async def test_configured_greeting(make_app, make_settings, make_push):
    import httpx
    app = make_app(settings=make_settings(WXHOOK_GREETING="欢迎你，{nickname}！",
                                          WXHOOK_GREETING_ANONYMOUS="欢迎！"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        push = make_push("subscribe")
        r = await c.post("/wechat", params=push.params, content=push.body)
    assert decode_reply(r.content, crypto=None)["Content"] == "欢迎你，刺猬宝宝！"


# -- other pushes -------------------------------------------------------------------------------

async def test_unknown_msgtype_is_answered_200_success(client):
    xml = (b"<xml><ToUserName>gh</ToUserName><FromUserName>oX</FromUserName><CreateTime>1"
           b"</CreateTime><MsgType>hologram</MsgType><MsgId>5</MsgId></xml>")
    push = sign_push(xml, token=TOKEN, openid="oX")
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200 and r.content == SUCCESS


async def test_text_without_a_matching_handler_is_success(client, make_push):
    push = make_push("text", text="just chatting")
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200 and r.content == SUCCESS


async def test_help_keyword(client, make_push):
    push = make_push("text", text="  HELP ")
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert "Send 'help'" in decode_reply(r.content, crypto=None)["Content"]


# -- retries and tokens ------------------------------------------------------------------------

async def test_three_tries_one_lookup_identical_bytes(client, make_push, sandbox):
    push = make_push("subscribe", openid="oRetryFollower00000000000001")
    replies = [await client.post("/wechat", params=push.params, content=push.body)
               for _ in range(3)]
    assert len({r.content for r in replies}) == 1
    assert sandbox.calls["/cgi-bin/user/info"] == 1


async def test_concurrent_tries_wait_for_the_first(client, make_push, sandbox):
    sandbox.latency = 0.2
    push = make_push("subscribe", aes=True, openid="oConcurrentTry00000000000001")
    replies = await asyncio.gather(*(client.post("/wechat", params=push.params,
                                                 content=push.body) for _ in range(3)))
    assert len({r.content for r in replies}) == 1 and b"<Encrypt>" in replies[0].content
    assert sandbox.calls["/cgi-bin/user/info"] == 1


async def test_forty_cold_pushes_cost_one_token_request(client, make_push, sandbox):
    sandbox.latency = 0.05
    pushes = [make_push("subscribe", openid=f"oColdStart{i:018d}") for i in range(40)]
    replies = await asyncio.gather(*(client.post("/wechat", params=p.params, content=p.body)
                                     for p in pushes))
    assert all("Welcome, Follower-" in decode_reply(r.content, crypto=None)["Content"]
               for r in replies)
    assert sandbox.token_requests == 1


async def test_invalidated_token_costs_exactly_one_token_request(client, make_push, sandbox):
    first = make_push("subscribe", openid="oBeforeInvalidation000000001")
    await client.post("/wechat", params=first.params, content=first.body)
    assert sandbox.token_requests == 1
    sandbox.invalidate_tokens()
    second = make_push("subscribe", openid="oAfterInvalidation0000000001")
    r = await client.post("/wechat", params=second.params, content=second.body)
    assert decode_reply(r.content, crypto=None)["Content"] == "Welcome, Follower-000001!"
    assert sandbox.token_requests == 2


async def test_classic_token_endpoint_setting(make_app, make_settings, make_push, sandbox):
    import httpx
    app = make_app(settings=make_settings(WXHOOK_TOKEN_ENDPOINT="classic"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        push = make_push("subscribe")
        await c.post("/wechat", params=push.params, content=push.body)
    assert sandbox.calls["/cgi-bin/token"] == 1 and sandbox.calls["/cgi-bin/stable_token"] == 0


# -- refusals ----------------------------------------------------------------------------------

async def test_wrong_signature_is_403(client, make_push):
    push = make_push("subscribe")
    r = await client.post("/wechat", params={**push.params, "signature": "f" * 40},
                          content=push.body)
    assert r.status_code == 403


async def test_wrong_or_missing_msg_signature_is_4xx(client, make_push):
    push = make_push("subscribe", aes=True)
    bad = await client.post("/wechat", params={**push.params, "msg_signature": "0" * 40},
                            content=push.body)
    missing = await client.post("/wechat", params={k: v for k, v in push.params.items()
                                                   if k != "msg_signature"}, content=push.body)
    assert bad.status_code == 403 and missing.status_code == 403


async def test_missing_parameters_are_400(client, make_push):
    push = make_push("subscribe")
    for drop in ("timestamp", "nonce", "signature"):
        params = {k: v for k, v in push.params.items() if k != drop}
        r = await client.post("/wechat", params=params, content=push.body)
        assert r.status_code in (400, 403), drop


async def test_stale_timestamp_is_403(client, make_push):
    push = make_push("subscribe", timestamp=int(time.time()) - 3600)
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 403


async def test_oversized_body_is_413(client, make_push):
    push = make_push("text", text="x" * (300 * 1024))
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 413


async def test_malformed_xml_is_400_then_a_good_push_is_served(client, make_push):
    push = make_push("subscribe")
    bad = await client.post("/wechat", params=push.params, content=b"<xml><broken")
    assert bad.status_code == 400
    good = make_push("subscribe")
    r = await client.post("/wechat", params=good.params, content=good.body)
    assert r.status_code == 200 and b"Welcome" in r.content


async def test_safe_body_without_encrypt_type_is_400(client, make_push):
    push = make_push("subscribe", aes=True)
    params = {k: v for k, v in push.params.items() if k not in ("encrypt_type", "msg_signature")}
    r = await client.post("/wechat", params=params, content=push.body)
    assert r.status_code == 400


async def test_encrypted_push_without_configured_key_is_400(make_app, make_settings, make_push):
    import httpx
    app = make_app(settings=make_settings(WECHAT_ENCODING_AES_KEY=""))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        push = make_push("subscribe", aes=True)
        r = await c.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 400


async def test_other_methods_are_405(client):
    r = await client.put("/wechat", params=_q())
    assert r.status_code == 405


def test_parse_query_matches_the_standard_parser():
    from urllib.parse import parse_qsl

    from wxhook.server.guard import parse_query
    for raw in (b"signature=ab&timestamp=1&nonce=2&openid=o_x-1", b"a=%E4%BD%A0+b&b=&&c",
                b"msg_signature=x%3Dy&encrypt_type=aes", b""):
        assert parse_query(raw) == dict(parse_qsl(raw.decode(), keep_blank_values=True))


async def test_unknown_types_are_counted_as_other(app, client):
    import re
    xml = (b"<xml><ToUserName>gh</ToUserName><FromUserName>oX</FromUserName><CreateTime>1"
           b"</CreateTime><MsgType>hologram-9</MsgType><MsgId>77</MsgId></xml>")
    push = sign_push(xml, token=TOKEN, openid="oX")
    await client.post("/wechat", params=push.params, content=push.body)
    text = (await client.get("/metrics")).text
    assert "hologram" not in text
    assert re.search(r'wxhook_pushes_total\{account="default",event="",msg_type="other",'
                     r'outcome="no_reply"\} 1', text)


async def test_retries_are_rebuilt_from_a_small_record(app, client, make_push):
    # Replies are kept for retries as a record, not whole: a busy minute holds many.
    from wxhook.server.store.fifo import digest

    kept = app.state.webhook.dedup.local
    for aes in (False, True):
        msg_id = 6054768590064713700 + int(aes)
        push = make_push("text", text="help", aes=aes, msg_id=msg_id,
                         openid=f"oRecord{int(aes)}" + "0" * 20)
        first = await client.post("/wechat", params=push.params, content=push.body)
        again = await client.post("/wechat", params=push.params, content=push.body)
        assert first.content == again.content
        record = kept.get(digest(f"m:{msg_id}"))
        # A text reply's record starts with [its text]: the version before this shape read
        # [time, tail], and int([...]) makes it answer "success" instead of garbage.
        assert isinstance(orjson.loads(record)[0], list)
        saved = len(first.content) - len(record)
        assert saved > (320 if aes else 120), (len(first.content), len(record))


async def test_retries_replay_any_reply_type_byte_for_byte(make_app, make_push, crypto):
    import httpx

    from wxhook.replies import NewsReply, TextReply
    from wxhook.router import Router

    router = Router()

    @router.message("text")
    async def reply(msg, ctx):
        if msg.content == "news":
            return NewsReply(title="标题 ]]> 1", description="d", url="https://e.x/a?b=1&c=2",
                             pic_url="https://e.x/p.png")
        return TextReply("回复 ]]> <b>&amp;\n" + msg.content)

    app = make_app(router=router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        for i, (text, aes) in enumerate([("news", False), ("news", True), ("hi", False),
                                         ("hi", True)]):
            push = make_push("text", text=text, aes=aes, openid=f"oAnyReply{i}" + "0" * 18)
            tries = [await client.post("/wechat", params=push.params, content=push.body)
                     for _ in range(3)]
            assert len({t.content for t in tries}) == 1
            fields = decode_reply(tries[0].content, crypto=crypto if aes
                                  else None)
            assert fields["MsgType"] == ("news" if text == "news" else "text")


async def test_a_record_kept_whole_by_an_earlier_version_still_replays(make_app, make_push,
                                                                        redis_url):
    # Before text replies were kept as their text, every record held the reply's XML tail;
    # instances of both versions share Redis during a rolling deploy.
    import httpx

    from wxhook.server.store.redis import RedisStore

    store = RedisStore(redis_url)
    app = make_app(store=store)
    push = make_push("text", text="hi", openid="oEarlierVersion000000000001")
    msg_id = push.body.split(b"<MsgId>")[1].split(b"</MsgId>")[0].decode()
    tail = "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[kept whole]]></Content></xml>"
    await store.set(app.state.webhook.dedup.prefix + f"m:{msg_id}",
                    orjson.dumps([1700000000, tail]), ttl=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        r = await client.post("/wechat", params=push.params, content=push.body)
    await store.aclose()
    fields = decode_reply(r.content, crypto=None)
    assert fields["Content"] == "kept whole" and fields["CreateTime"] == "1700000000"


class _FailingStore:
    """A shared store whose every operation fails as Redis does when READONLY or OOM."""

    shared = True

    async def _fail(self, *a, **k):
        raise RuntimeError("READONLY You can't write against a read only replica.")

    get = set = delete = delete_if = replace_if = hgetall = hset = ping = _fail

    async def aclose(self):
        return None


async def test_a_failing_store_never_costs_the_reply(make_app, make_push, sandbox):
    import httpx

    from wxhook.server.profiles import StoreProfileRepo
    from wxhook.server.store.memory import MemoryStore

    app = make_app(store=_FailingStore(),
                   profile_repo=StoreProfileRepo(MemoryStore(), namespace="p:"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for kind in ("text", "subscribe"):
            push = make_push(kind, text="help")
            r = await c.post("/wechat", params=push.params, content=push.body)
            assert r.status_code == 200 and r.content != SUCCESS, r.text


# -- text XML cannot carry, in a looked-up nickname ----------------------------------------------

# user/info answers escapes JSON allows and XML does not: a lone surrogate (a nickname cut
# inside an emoji), controls, U+FFFF. The follower is greeted by what is left.
DIRTY_NAMES = [(rb'"Ann\ud800e"', "Anne"), (rb'"\udc00Ann\u0001e\uffff"', "Anne"),
               (rb'"Ann\ud83de\u000b"', "Anne"), (rb'"\ud800"', None)]


@pytest.mark.parametrize("aes", [False, True], ids=["plain", "safe"])
@pytest.mark.parametrize(("raw", "clean"), DIRTY_NAMES)
async def test_a_nickname_xml_cannot_carry_is_cleaned_not_fatal(
        make_app, make_push, sandbox_app, sandbox, crypto, aes, raw, clean):
    openid = "oDirtyNameFollower0000000001"
    sandbox.users[openid] = {"nickname": "DIRTY-NAME"}
    async with dirty_json(sandbox_app, {"DIRTY-NAME": raw}) as http:
        app = make_app(http=http)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            push = make_push("subscribe", openid=openid, aes=aes)
            r = await client.post("/wechat", params=push.params, content=push.body)
            assert r.status_code == 200
            f = decode_reply(r.content, crypto=crypto if aes else None)
            assert f["Content"] == (f"Welcome, {clean}!" if clean else "Welcome!")
            assert f["ToUserName"] == openid
            # The cached name is the clean one: no second lookup, nothing to clean again.
            lookups = sandbox.calls["/cgi-bin/user/info"]
            assert await app.state.profiles.nickname(openid) == clean
            assert sandbox.calls["/cgi-bin/user/info"] == lookups == 1


# -- only the root's direct children are the push's fields ---------------------------------------

_FORGED = ("<FromUserName>oEVIL</FromUserName><ToUserName>gh_evil</ToUserName>"
           "<MsgType>text</MsgType><MsgId>1</MsgId><Event>unsubscribe</Event>"
           "<EventKey>evil</EventKey><CreateTime>1</CreateTime>")


def _nested(xml: bytes, where: str) -> bytes:
    boxes = {"Extra": f"<Extra>{_FORGED}</Extra>",
             "deep": f"<Extra><Inner>{_FORGED}</Inner></Extra>",
             "ScanCodeInfo": f"<ScanCodeInfo>{_FORGED}</ScanCodeInfo>",
             "SendPicsInfo": f"<SendPicsInfo><PicList><item>{_FORGED}</item></PicList>"
                             "</SendPicsInfo>"}
    return xml.replace(b"</xml>", boxes[where].encode() + b"</xml>")  # after the real fields


@pytest.mark.parametrize("aes", [False, True], ids=["plain", "safe"])
@pytest.mark.parametrize("where", ["Extra", "deep", "ScanCodeInfo", "SendPicsInfo"])
async def test_nested_fields_never_change_the_push(client, make_push, crypto, aes, where):
    greet = make_push("subscribe", aes=aes, xml=_nested(push_xml(
        "subscribe", openid=OPENID, event_key="qrscene_7"), where))
    r = await client.post("/wechat", params=greet.params, content=greet.body)
    f = decode_reply(r.content, crypto=crypto if aes else None)
    assert (f["Content"], f["ToUserName"], f["FromUserName"]) == \
        ("Welcome, 刺猬宝宝!", OPENID, "gh_sandbox000001")
    # The dedup key is the top-level MsgId: the same message with other nested ids is a retry.
    first = None
    for forged_id in ("1", "2"):
        xml = push_xml("text", openid=OPENID, text="help", msg_id=6054768590064713777)
        xml = _nested(xml, where).replace(b"<MsgId>1</MsgId>", f"<MsgId>{forged_id}</MsgId>"
                                          .encode())
        push = make_push("text", aes=aes, xml=xml)
        r = await client.post("/wechat", params=push.params, content=push.body)
        f = decode_reply(r.content, crypto=crypto if aes else None)
        assert f["ToUserName"] == OPENID and "help" in f["Content"]
        first = first or f
        assert f == first


@pytest.mark.parametrize("aes", [False, True], ids=["plain", "safe"])
@pytest.mark.parametrize("tag", ["FromUserName", "MsgType", "MsgId", "Content"])
async def test_a_repeated_field_is_a_malformed_push(client, crypto, aes, tag):
    xml = push_xml("text", openid=OPENID, text="help", msg_id=6054768590064713778)
    second = {"FromUserName": "oEVIL", "MsgType": "event", "MsgId": "1", "Content": "x"}[tag]
    xml = xml.replace(b"</xml>", f"<{tag}>{second}</{tag}></xml>".encode())
    push = _signed(xml, crypto=crypto if aes else None)
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 400 and "repeated" in r.text


def _signed(xml: bytes, *, crypto: MessageCrypto | None) -> Push:
    """A push signed (and sealed) as WeChat would, whatever its XML (sign_push parses it)."""
    ts, nonce = str(int(time.time())), secrets.token_hex(8)
    params = {"signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce,
              "openid": OPENID}
    if crypto is None:
        return Push(params, xml)
    encrypt = crypto.encrypt(xml)
    params.update(encrypt_type="aes", msg_signature=sign(TOKEN, ts, nonce, encrypt))
    return Push(params, (f"<xml><ToUserName><![CDATA[gh_sandbox000001]]></ToUserName>"
                         f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>").encode())
