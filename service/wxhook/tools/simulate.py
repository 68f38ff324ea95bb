"""Build pushes exactly as WeChat does (sign, encrypt), send them, decode the replies."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from wxhook.errors import WeChatError
from wxhook.replies import cdata
from wxhook.server.config import SANDBOX_APP_ID, Settings
from wxhook.server.crypto import MessageCrypto
from wxhook.server.signature import sign
from wxhook.server.xmldoc import parse_fields, reply_fields

_MESSAGE_TYPES = {"text", "image", "voice", "video", "shortvideo", "location", "link"}


@dataclass(frozen=True)
class Push:
    """One push as WeChat would send it: query parameters and body."""

    params: dict[str, str]
    body: bytes


def push_xml(kind: str, *, openid: str, to_user: str = "gh_sandbox000001", text: str = "hello",
             event_key: str = "", create_time: int | None = None,
             msg_id: int | None = None, fields: Mapping[str, str] | None = None) -> bytes:
    """The plaintext XML of a message (`kind` a MsgType) or an event (anything else);
    `fields` add or replace elements, "Outer/Inner" nested one level (as msg.raw names them)."""
    ct = int(time.time()) if create_time is None else create_time
    head = (f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(openid)}"
            f"</FromUserName><CreateTime>{ct}</CreateTime>")
    mid = msg_id if msg_id is not None else secrets.randbits(63)
    k = kind.lower()
    # Messages by name in any case, except the all-caps LOCATION: that is the location-report
    # event, as WeChat spells it (the message is "location").
    if k in _MESSAGE_TYPES and kind != "LOCATION":
        body = {"MsgType": k, **_SAMPLE_FIELDS.get(k, {"Content": text}), **(fields or {}),
                "MsgId": str(mid)}
    else:
        body = {"MsgType": "event", "Event": kind, **({"EventKey": event_key} if event_key
                                                      else {}), **(fields or {})}
    return (head + _elements(body) + "</xml>").encode()


# What each message type carries, as the sandbox sends it (text: the `text` argument).
_SAMPLE_FIELDS = {
    "image": {"PicUrl": "http://mmbiz.qpic.cn/x", "MediaId": "media_1"},
    "voice": {"MediaId": "media_1", "Format": "amr"},
    "video": {"MediaId": "m", "ThumbMediaId": "t"},
    "shortvideo": {"MediaId": "m", "ThumbMediaId": "t"},
    "location": {"Location_X": "23.134521", "Location_Y": "113.358803", "Scale": "20",
                 "Label": "Somewhere"},
    "link": {"Title": "t", "Description": "d", "Url": "https://example.com"},
}


def _elements(fields: Mapping[str, str]) -> str:
    """<Tag>value</Tag> for each field; "Outer/Inner" fields grouped in one <Outer>."""
    out: dict[str, list[str]] = {}
    for path, value in fields.items():
        outer, _, inner = path.partition("/")
        element = (f"<{inner}>{cdata(value)}</{inner}>" if inner
                   else cdata(value) if not value.isdigit() else value)
        out.setdefault(outer, []).append(element)
    return "".join(f"<{tag}>{''.join(parts)}</{tag}>" for tag, parts in out.items())


def sign_push(xml: bytes, *, token: str, openid: str, crypto: MessageCrypto | None = None,
              timestamp: int | None = None, nonce: str | None = None) -> Push:
    """Sign a push; with `crypto`, wrap it in safe mode as WeChat does."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nc = nonce or str(secrets.randbelow(10**10))
    params = {"signature": sign(token, ts, nc), "timestamp": ts, "nonce": nc, "openid": openid}
    if crypto is None:
        return Push(params, xml)
    encrypt = crypto.encrypt(xml)
    to_user = parse_fields(xml).get("ToUserName", "")
    body = (f"<xml><ToUserName>{cdata(to_user)}</ToUserName>"
            f"<Encrypt>{cdata(encrypt)}</Encrypt></xml>").encode()
    params.update(encrypt_type="aes", msg_signature=sign(token, ts, nc, encrypt))
    return Push(params, body)


def decode_reply(body: bytes, *, crypto: MessageCrypto | None) -> dict[str, str]:
    """A reply's fields; an encrypted reply's MsgSignature is checked and it is decrypted."""
    if body in (b"", b"success"):
        return {}
    fields = parse_fields(body)
    if "Encrypt" in fields:
        if crypto is None:
            raise WeChatError("encrypted reply but no EncodingAESKey to read it")
        crypto.check_signature(fields.get("TimeStamp", ""), fields.get("Nonce", ""),
                               fields["Encrypt"], fields.get("MsgSignature", ""))
        return reply_fields(crypto.decrypt(fields["Encrypt"]))
    return reply_fields(body)


def _signature_hint(settings: Settings) -> str:
    source = ("the built-in sandbox token (no WECHAT_* set)" if settings.sandbox
              and settings.app_id == SANDBOX_APP_ID
              else "WECHAT_TOKEN from the environment or .env")
    return (f"the server refused the signature: simulate signs with {source}"
            f" ({len(settings.token.get_secret_value())} characters) and, with --aes, "
            "WECHAT_ENCODING_AES_KEY; set the same values as the server's (run simulate "
            "from the server's directory, or export them)")


async def simulate(settings: Settings, *, kind: str, url: str, openid: str, text: str,
                   event_key: str, aes: bool, repeat: int = 1, insecure: bool = False) -> int:
    """`wxhook simulate`: print what the follower would see; exit 0 on a valid answer."""
    token = settings.token.get_secret_value()
    crypto = MessageCrypto(token, settings.aes_keys, settings.app_id) if settings.aes_keys else None
    if aes and crypto is None:
        print("--aes needs WECHAT_ENCODING_AES_KEY", file=sys.stderr)
        return 2
    push = sign_push(push_xml(kind, openid=openid, text=text, event_key=event_key),
                     token=token, openid=openid, crypto=crypto if aes else None)
    code = 0
    async with httpx.AsyncClient(timeout=10.0, verify=not insecure) as client:
        for i in range(max(1, repeat)):
            started = time.monotonic()
            try:
                resp = await client.post(url, params=push.params, content=push.body,
                                         headers={"content-type": "text/xml"})
            except httpx.HTTPError as exc:
                print(f"could not reach {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    print("  a self-signed certificate? add --insecure", file=sys.stderr)
                return 1
            ms = (time.monotonic() - started) * 1000
            print(f"try {i + 1}: HTTP {resp.status_code} in {ms:.0f} ms"
                  + (" (encrypted reply)" if b"<Encrypt>" in resp.content else ""))
            if resp.status_code != 200:
                # UTF-8, as wxhook answers: resp.text would decode in whatever charset the
                # answer names (punycode takes seconds on a large body).
                answer = resp.content.decode("utf-8", "replace")
                print(answer)
                if resp.status_code == 403 and "signature" in answer:
                    print(_signature_hint(settings), file=sys.stderr)
                code = 1
                continue
            try:
                fields = decode_reply(resp.content, crypto=crypto)
            except WeChatError as exc:
                print(f"invalid reply: {exc}", file=sys.stderr)
                code = 1
                continue
            if not fields:
                print("  (no reply: 'success')")
            for k in ("MsgType", "Content", "Title", "Description", "Url", "PicUrl", "MediaId",
                      "ThumbMediaId", "MusicUrl", "ToUserName", "FromUserName"):
                if k in fields:
                    print(f"  {k}: {fields[k]}")
    return code
