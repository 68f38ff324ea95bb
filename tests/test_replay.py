"""A captured request sent again in another shape: a push stripped of its encryption, the
same message in the other encoding, a URL verification replayed as a push (and back).

A push is one push whatever shape it arrives in: the handler runs once, its customer-service
follow-up goes out once, on one instance or on two sharing a real Redis. Counted where it
lands: the sandbox's custom/send.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from service.crypto import MessageCrypto
from service.metrics import Metrics
from service.signature import sign
from service.store.memory import MemoryStore
from service.tools.sandbox import SandboxState
from service.tools.simulate import Push, decode_reply, push_xml, sign_push
from service.xmldoc import parse_fields
from tests.conftest import OPENID
from tests.support import TOKEN

RULES = """\
keywords:
  - name: all
    equal: [all]
    mode: reply_all
    replies: ["one", "two"]
"""
MODES = ["plain", "compat", "safe"]
DROP = ("encrypt_type", "msg_signature")


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


@pytest.fixture
def instances(request: pytest.FixtureRequest, make_app: Callable[..., Any],
              make_settings: Callable[..., Any], rules_file: Path) -> Callable[..., Any]:
    """instances(count, **settings): `count` apps of one account on the in-process sandbox,
    answering with the rules file; two share a real Redis."""
    @asynccontextmanager
    async def start(count: int, *, store: Callable[[], Any] = MemoryStore,
                    **settings: str) -> AsyncIterator[list[httpx.AsyncClient]]:
        conf = make_settings(WXHOOK_RULES=str(rules_file), **settings)
        async with AsyncExitStack() as stack:
            clients = []
            for _ in range(count):
                if count > 1:
                    from service.store.redis import RedisStore

                    shared = RedisStore(request.getfixturevalue("redis_url"))
                    stack.push_async_callback(shared.aclose)
                else:
                    shared = store()
                app = make_app(settings=conf, store=shared, metrics=Metrics())
                client = await stack.enter_async_context(httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://testserver"))
                client.app = app
                clients.append(client)
            yield clients
            for c in clients:  # every follow-up sent or given up before the count
                await c.app.state.delivery.drain(5)
    return start


def compat(xml: bytes, crypto: MessageCrypto, **kw: Any) -> Push:
    """A compatible-mode push: the plaintext fields and Encrypt, signed as WeChat does."""
    sealed = sign_push(xml, token=TOKEN, openid=OPENID, crypto=crypto, **kw)
    encrypt = parse_fields(sealed.body)["Encrypt"]
    return Push(sealed.params,
                xml.replace(b"</xml>", f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode()))


def original(mode: str, xml: bytes, crypto: MessageCrypto) -> Push:
    """What WeChat sends to an account whose console is set to `mode`."""
    if mode == "plain":
        return sign_push(xml, token=TOKEN, openid=OPENID)
    if mode == "compat":
        return compat(xml, crypto)
    return sign_push(xml, token=TOKEN, openid=OPENID, crypto=crypto)


def without(params: dict[str, str], *keys: str, **extra: str) -> dict[str, str]:
    return {**{k: v for k, v in params.items() if k not in keys}, **extra}


# What an attacker holding one captured push can send: its query with the encryption
# stripped (wholly, or the flag only), the flag changed, the body unwrapped to the plaintext
# it carries (compat) or holds (safe, for someone who could read it), or the plaintext body
# under the encrypted query.
VARIANTS: dict[str, Callable[[Push, bytes], Push]] = {
    "strip-both": lambda p, xml: Push(without(p.params, *DROP), p.body),
    "strip-flag": lambda p, xml: Push(without(p.params, "encrypt_type"), p.body),
    "strip-signature": lambda p, xml: Push(without(p.params, "msg_signature"), p.body),
    "flag-raw": lambda p, xml: Push(without(p.params, "encrypt_type", encrypt_type="raw"), p.body),
    "flag-empty": lambda p, xml: Push(without(p.params, "encrypt_type", encrypt_type=""), p.body),
    "flag-odd": lambda p, xml: Push(without(p.params, "encrypt_type", encrypt_type="aes "),
                                    p.body),
    "unwrapped": lambda p, xml: Push(without(p.params, *DROP), xml),
    "unwrapped-flagged": lambda p, xml: Push(p.params, xml),
    "unwrapped-flag-only": lambda p, xml: Push(without(p.params, "msg_signature"), xml),
}


def refusal(name: str) -> tuple[bytes, ...]:
    """How a replay is refused: as a replay, unless it keeps the captured push's shape and body
    (then that push's own refusal: its msg_signature missing, or its mode)."""
    return (b"msg_signature", b"mode") if name == "strip-signature" else (b"replay",)


async def sent_after(clients: list[httpx.AsyncClient], sandbox: SandboxState) -> int:
    for c in clients:
        await c.app.state.delivery.drain(5)
    return len(sandbox.sent)


# -- 1. the encryption stripped off a captured push ----------------------------------------------

@pytest.mark.parametrize("count", [1, 2], ids=["one-instance", "two-instances-redis"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_captured_push_runs_once_whatever_shape_it_is_sent_again_in(
        instances, crypto, sandbox, mode, count):
    async with instances(count, WXHOOK_MESSAGE_MODE=mode) as clients:
        xml = push_xml("text", openid=OPENID, text="all")
        push = original(mode, xml, crypto)
        first = await clients[0].post("/wechat", params=push.params, content=push.body)
        assert first.status_code == 200, first.text
        assert decode_reply(first.content, crypto=crypto)["Content"] == "one"
        assert (b"<Encrypt>" in first.content) == (mode != "plain")
        for i, (name, variant) in enumerate(VARIANTS.items()):
            replay = variant(push, xml)
            target = clients[(i + 1) % count]
            r = await target.post("/wechat", params=replay.params, content=replay.body)
            if mode == "plain":
                # Nothing was stripped: each is WeChat's retry (same body, plaintext shape),
                # or refused.
                assert r.content == first.content or 400 <= r.status_code < 500, name
            else:
                # The query is used up by the encrypted push: in any other shape, or with any
                # other body, it is a replay.
                assert 400 <= r.status_code < 500, (name, r.text)
                assert r.content.startswith(refusal(name)), (name, r.text)
        retry = await clients[-1].post("/wechat", params=push.params, content=push.body)
        assert retry.status_code == 200 and retry.content == first.content
        assert await sent_after(clients, sandbox) == 1  # the follow-up "two", once
    assert sandbox.sent == [{"touser": OPENID, "msgtype": "text", "text": {"content": "two"}}]


@pytest.mark.parametrize("flag", [None, "raw", "", "AES "])
@pytest.mark.parametrize("shape", ["compat", "safe"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_body_carrying_encrypt_is_never_taken_as_plaintext(
        instances, crypto, sandbox, mode, shape, flag):
    # A fresh query (its first use): the refusal is the body's own, not the nonce memory's.
    # No console mode makes WeChat send Encrypt without encrypt_type=aes: a plain-configured
    # account's console sends plaintext bodies, and a compat console adds the flag (which a
    # plain-configured account refuses as "mode").
    async with instances(1, WXHOOK_MESSAGE_MODE=mode) as (client,):
        xml = push_xml("text", openid=OPENID, text="all")
        push = original(shape, xml, crypto)
        params = without(push.params, *DROP, **({} if flag is None else {"encrypt_type": flag}))
        r = await client.post("/wechat", params=params, content=push.body)
        assert 400 <= r.status_code < 500 and r.content.startswith(b"mode"), r.text
        assert await sent_after([client], sandbox) == 0


@pytest.mark.parametrize(("mode", "shape"), [("plain", "compat"), ("plain", "safe"),
                                             ("safe", "plain")])
async def test_a_push_refused_for_its_mode_uses_up_its_query(instances, crypto, sandbox, mode,
                                                            shape):
    # An encrypted push at a plain-configured account (or a plaintext one at a safe account)
    # is refused; stripped or unwrapped into the shape the account takes, it is the same push
    # and refused again, never run.
    async with instances(1, WXHOOK_MESSAGE_MODE=mode) as (client,):
        xml = push_xml("text", openid=OPENID, text="all")
        push = original(shape, xml, crypto)
        r = await client.post("/wechat", params=push.params, content=push.body)
        assert 400 <= r.status_code < 500 and r.content.startswith(b"mode")
        again = await client.post("/wechat", params=push.params, content=push.body)
        assert again.content.startswith(b"mode")  # WeChat's retry: the same answer
        sealed = compat(xml, crypto, timestamp=int(push.params["timestamp"]),
                        nonce=push.params["nonce"])
        for name, variant in VARIANTS.items():
            for replay in (variant(push, xml), variant(sealed, xml)):
                if replay.params == push.params and replay.body == push.body:
                    continue
                r = await client.post("/wechat", params=replay.params, content=replay.body)
                # In the shape the account refuses: refused again; in any other: a replay.
                assert 400 <= r.status_code < 500, (name, r.text)
                assert r.content.startswith((b"mode", b"replay")), (name, r.text)
        assert await sent_after([client], sandbox) == 0


class NoNonceMemory(MemoryStore):
    """A shared store whose nonce keys cannot be written: the dedup record stands alone."""

    shared = True

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        if ":nonce:" in key:
            raise ConnectionError("nonce memory down")
        return await super().set(key, value, ttl=ttl, nx=nx)


@pytest.mark.parametrize("encrypted_first", [True, False], ids=["sealed-first", "plain-first"])
async def test_one_message_in_both_encodings_runs_its_handler_once(
        instances, crypto, sandbox, encrypted_first):
    # Without the nonce memory (its store failing) the dedup record is the last guard: one
    # MsgId is one message whether it came sealed or not. A sealed reply is never opened
    # into plaintext ("success" instead); a plaintext one is sealed for an encrypted try.
    async with instances(1, store=NoNonceMemory) as (client,):
        xml = push_xml("text", openid=OPENID, text="all")
        query = {"timestamp": int(time.time()), "nonce": "1514711492"}  # one signed query
        sealed = compat(xml, crypto, **query)
        plain = sign_push(xml, token=TOKEN, openid=OPENID, **query)
        tries = [sealed, plain] if encrypted_first else [plain, sealed]
        answers = [await client.post("/wechat", params=p.params, content=p.body) for p in tries]
        assert [a.status_code for a in answers] == [200, 200]
        assert decode_reply(answers[0].content, crypto=crypto)["Content"] == "one"
        if encrypted_first:
            assert answers[1].content == b"success"
        else:
            assert b"<Encrypt>" in answers[1].content
            assert decode_reply(answers[1].content, crypto=crypto)["Content"] == "one"
        assert await sent_after([client], sandbox) == 1


# -- 2. a URL verification replayed as a push, and a push's query as a verification ---------------

def verification(echostr: str = "4375120948345356249", **kw: Any) -> dict[str, str]:
    ts = str(kw.pop("ts", int(time.time())))
    nonce = kw.pop("nonce", "1514711492")
    return {"signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce,
            "echostr": echostr}


@pytest.mark.parametrize("count", [1, 2], ids=["one-instance", "two-instances-redis"])
@pytest.mark.parametrize("body", ["plaintext", "compat", "empty", "echostr"])
async def test_a_verification_get_replayed_as_a_push_is_refused(instances, crypto, sandbox,
                                                               count, body):
    async with instances(count) as clients:
        q = verification()
        got = await clients[0].get("/wechat", params=q)
        assert got.status_code == 200 and got.content == q["echostr"].encode()
        xml = push_xml("text", openid=OPENID, text="all")
        params = {k: q[k] for k in ("signature", "timestamp", "nonce")}
        push = {"plaintext": Push(params, xml), "empty": Push(params, b""),
                "echostr": Push(params, q["echostr"].encode()),
                "compat": compat(xml, crypto, timestamp=int(q["timestamp"]),
                                 nonce=q["nonce"])}[body]
        r = await clients[-1].post("/wechat", params={**push.params, "openid": OPENID},
                                   content=push.body)
        assert r.status_code == 403 and r.content.startswith(b"replay"), r.text
        assert await sent_after(clients, sandbox) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_push_query_replayed_as_a_verification_is_refused(instances, crypto, mode):
    async with instances(1, WXHOOK_MESSAGE_MODE=mode) as (client,):
        push = original(mode, push_xml("text", openid=OPENID, text="hello"), crypto)
        assert (await client.post("/wechat", params=push.params, content=push.body)).status_code \
            == 200
        for echostr in ("pwned", push.body.decode()):  # any echo, the push's body too
            r = await client.get("/wechat", params={**push.params, "echostr": echostr})
            assert r.status_code == 403 and r.content.startswith(b"replay"), r.text


async def test_a_verification_repeated_verbatim_is_answered_again(make_app, make_settings):
    # WeChat's console sends a new query each time it saves; a verbatim repeat (a network
    # retry, or a replay) runs nothing and echoes only what it was sent, so it is answered
    # for as long as its timestamp is fresh, past the dedup record's span too. The same
    # query with another echostr is not WeChat's: refused.
    now = [float(int(time.time()))]
    app = make_app(settings=make_settings(WXHOOK_DEDUP_TTL="30"), wall_clock=lambda: now[0])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        q = verification(ts=int(now[0]))
        for step in (0, 5, 60, 200):
            now[0] += step
            r = await client.get("/wechat", params=q)
            assert r.status_code == 200 and r.content == q["echostr"].encode(), step
        other = await client.get("/wechat", params={**q, "echostr": "123"})
        assert other.status_code == 403 and other.content.startswith(b"replay")
        now[0] += 200  # out of the window
        assert (await client.get("/wechat", params=q)).status_code == 403
        fresh = verification(ts=int(now[0]), nonce="486452656")  # a console re-save
        r = await client.get("/wechat", params=fresh)
        assert r.status_code == 200 and r.content == fresh["echostr"].encode()


async def test_repeated_verifications_write_a_bounded_number_of_lines(make_app):
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    app = make_app(clock=Clock(), metrics=Metrics())
    q = verification()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        with capture_logs() as logs:
            for _ in range(50):
                assert (await client.get("/wechat", params=q)).status_code == 200
    assert len([e for e in logs if e["event"] == "url_verified"]) == 10
