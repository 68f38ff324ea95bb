"""Guard.admit on its own: the modes, the nonce memory's span, the key a reply is sealed with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException

from handlers.router import Context, Router
from service.config import Settings
from service.crypto import MessageCrypto
from service.errors import FreshnessError
from service.guard import Admission, Guard
from service.messages import InboundMessage, TextMessage
from service.metrics import Metrics
from service.replies import TextReply
from service.signature import sign
from service.store.memory import MemoryStore
from service.tools.simulate import decode_reply, push_xml, sign_push
from service.xmldoc import parse_fields
from tests.conftest import OPENID
from tests.support import AES_KEY, TOKEN, V2, V3

NEW_KEY = "B" * 43  # the key the console changed to; AES_KEY is the previous one


class SharedMemory(MemoryStore):
    """A store that says it is shared, so dedup and nonces live in it (with its clock)."""

    shared = True


async def admit(guard: Guard, params: dict[str, str], body: bytes) -> Admission:
    scope = {"headers": [(b"content-length", str(len(body)).encode())]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return await guard.admit(scope, receive, params, time.monotonic() + 5)


def guard_of(settings: Settings, clock: Callable[[], float], store: Any = None) -> Guard:
    return Guard(settings, store=store or MemoryStore(), namespace="t:", metrics=Metrics(),
                 clock=clock)


# -- key rotation --------------------------------------------------------------------------------

async def test_a_push_under_the_old_key_is_answered_under_the_old_key(make_settings):
    settings = make_settings(WECHAT_APP_ID=V2.appid, WECHAT_TOKEN=V2.token,
                             WECHAT_ENCODING_AES_KEY=f"{NEW_KEY},{AES_KEY}")
    guard = guard_of(settings, lambda: float(V2.timestamp))
    params = {"signature": sign(V2.token, V2.timestamp, V2.nonce), "timestamp": V2.timestamp,
              "nonce": V2.nonce, "encrypt_type": "aes", "msg_signature": V2.msg_signature}
    body = (f"<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>"
            f"<Encrypt><![CDATA[{V2.encrypt}]]></Encrypt></xml>").encode()
    admitted = await admit(guard, params, body)
    assert isinstance(admitted.message, TextMessage) and admitted.message.content == "abcdteT"
    assert admitted.key == 1 and admitted.crypto is not None
    reply = admitted.crypto.wrap_reply(b"<xml><Content>ok</Content></xml>", key=admitted.key)
    f = decode_reply(reply, crypto=MessageCrypto(V2.token, [AES_KEY], V2.appid))
    assert f["Content"] == "ok"
    # wechatpy, holding the old key only (as WeChat does until the change), reads it too.
    raw, envelope = reply.decode(), parse_fields(reply)
    sig, ts, nonce = envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"]
    assert "ok" in WeChatCrypto(V2.token, AES_KEY, V2.appid).decrypt_message(raw, sig, ts, nonce)
    with pytest.raises(Exception):  # noqa: B017 - any failure: the new key cannot read it
        decode_reply(reply, crypto=MessageCrypto(V2.token, [NEW_KEY], V2.appid))
    with pytest.raises(InvalidSignatureException):
        WeChatCrypto(V2.token, AES_KEY, V2.appid).decrypt_message(raw, "0" * 40, ts, nonce)


def test_the_published_encryption_vector_under_the_second_key():
    # V3 (official Java sample) with the vector's key listed second: key=1 picks it.
    c = MessageCrypto(V3.token, [NEW_KEY, AES_KEY], V3.appid)
    assert c.encrypt(V3.plain, random_prefix=V3.random, key=1) == V3.encrypt
    assert c.encrypt(V3.plain, random_prefix=V3.random) != V3.encrypt
    assert c.decrypt_with_key(V3.encrypt) == (V3.plain, 1)


# -- the modes -----------------------------------------------------------------------------------

def test_the_dedup_key_is_the_message_s_whatever_its_encoding():
    # One message, sealed or not, runs its handler once (tests/test_replay.py: the route).
    msg = InboundMessage("gh", OPENID, 1, "text", "42")
    crypto = MessageCrypto(TOKEN, [AES_KEY], "wx1")
    plain, sealed = Admission(msg, "plain"), Admission(msg, "safe", crypto, 0)
    assert plain.dedup_key == sealed.dedup_key == "m:42"


# -- the nonce memory covers what dedup forgets ---------------------------------------------------

@pytest.mark.parametrize("shared", [False, True], ids=["local", "shared"])
async def test_a_verbatim_replay_after_the_dedup_ttl_is_refused(make_settings, shared):
    now = [float(int(time.time()))]
    store = SharedMemory(clock=lambda: now[0]) if shared else MemoryStore()
    guard = guard_of(make_settings(WXHOOK_DEDUP_TTL="30"), lambda: now[0], store)
    push = sign_push(push_xml("text", openid=OPENID), token=TOKEN, openid=OPENID,
                     timestamp=int(now[0]))
    await admit(guard, push.params, push.body)
    now[0] += 15  # WeChat's last retry: its reply is still remembered
    await admit(guard, push.params, push.body)
    now[0] += 18  # +33 s: inside the 300-s window, past the 30-s dedup record
    with pytest.raises(FreshnessError) as caught:
        await admit(guard, push.params, push.body)
    assert caught.value.reason == "replay"


async def test_a_replay_after_the_dedup_ttl_does_not_run_the_handler_again(
        make_app, make_settings):
    now = [float(int(time.time()))]
    runs: list[str] = []

    async def count(msg: InboundMessage, ctx: Context) -> TextReply:
        runs.append(msg.msg_id)
        return TextReply("once")

    router = Router()
    router.register(count, msg_types=("text",))
    settings = make_settings(WXHOOK_DEDUP_TTL="30")
    store = SharedMemory(clock=lambda: now[0])  # dedup records expire on the same clock
    app = make_app(settings=settings, store=store, router=router, wall_clock=lambda: now[0])
    push = sign_push(push_xml("text", openid=OPENID), token=TOKEN, openid=OPENID,
                     timestamp=int(now[0]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        first = await client.post("/wechat", params=push.params, content=push.body)
        assert first.status_code == 200 and b"once" in first.content
        now[0] += 33
        again = await client.post("/wechat", params=push.params, content=push.body)
    assert again.status_code == 403 and again.content.startswith(b"replay")
    assert len(runs) == 1


async def test_redis_nonces_refuse_a_forged_body_and_a_late_repeat(make_settings, redis_url):
    # Two instances share one Redis: what one admitted, the other remembers.
    from service.store.redis import RedisStore

    now = [float(int(time.time()))]
    settings = make_settings(WXHOOK_DEDUP_TTL="30")
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    try:
        a, b = (guard_of(settings, lambda: now[0], s) for s in stores)
        push = sign_push(push_xml("text", openid=OPENID), token=TOKEN, openid=OPENID,
                         timestamp=int(now[0]))
        await admit(a, push.params, push.body)
        await admit(b, push.params, push.body)  # WeChat's retry, on the other instance
        with pytest.raises(FreshnessError):
            await admit(b, push.params, push_xml("text", openid=OPENID, text="forged"))
        now[0] += 31
        with pytest.raises(FreshnessError):
            await admit(a, push.params, push.body)
    finally:
        for s in stores:
            await s.aclose()
