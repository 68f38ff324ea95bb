"""Passive replies: frozen types and their XML, CDATA-safe (pipeline step 7)."""

from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson


class Sealer(Protocol):
    """What seals a reply in safe/compatible mode (crypto.MessageCrypto)."""

    def wrap_reply(self, reply: bytes, *, timestamp: str | None = None,
                   nonce: str | None = None, random_prefix: bytes | None = None,
                   key: int = 0) -> bytes:
        """The encrypted envelope of `reply`; the same inputs give the same bytes."""


SUCCESS = b"success"  # WeChat's "no reply": anything else invalid shows the follower an error

# Characters XML 1.0 cannot carry: controls, U+FFFE/FFFF and surrogates (alone they are
# not even UTF-8; user/info and sns/userinfo answer a nickname cut inside an emoji as one).
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry, so it encodes as UTF-8 too."""
    if text.isascii() and text.isprintable():  # the common case: none of them, no scan
        return text
    return _INVALID_XML.sub("", text)


def cdata(value: str) -> str:
    """Wrap in CDATA; a "]]>" inside is split across two sections so the XML stays valid."""
    if not (value.isascii() and value.isprintable()):  # (kept inline: on every push's path)
        value = xml_safe(value)
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


@dataclass(frozen=True, slots=True)
class Reply(ABC):
    """Base of every passive reply."""

    msg_type: ClassVar[str]

    @abstractmethod
    def body(self) -> str:
        """The type-specific XML after MsgType."""

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        """The same content as a customer-service message, or None if it has no such form."""
        return None


@dataclass(frozen=True, slots=True)
class TextReply(Reply):
    """A text reply."""

    content: str

    msg_type: ClassVar[str] = "text"

    def body(self) -> str:
        return f"<Content>{cdata(self.content)}</Content>"

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "text", "text": {"content": xml_safe(self.content)}}


@dataclass(frozen=True, slots=True)
class ImageReply(Reply):
    """An image already uploaded as media."""

    media_id: str

    msg_type: ClassVar[str] = "image"

    def body(self) -> str:
        return f"<Image><MediaId>{cdata(self.media_id)}</MediaId></Image>"

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "image",
                "image": {"media_id": xml_safe(self.media_id)}}


@dataclass(frozen=True, slots=True)
class VoiceReply(Reply):
    """A voice clip already uploaded as media."""

    media_id: str

    msg_type: ClassVar[str] = "voice"

    def body(self) -> str:
        return f"<Voice><MediaId>{cdata(self.media_id)}</MediaId></Voice>"

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "voice",
                "voice": {"media_id": xml_safe(self.media_id)}}


@dataclass(frozen=True, slots=True)
class VideoReply(Reply):
    """A video already uploaded as media."""

    media_id: str
    title: str = ""
    description: str = ""

    msg_type: ClassVar[str] = "video"

    def body(self) -> str:
        return (f"<Video><MediaId>{cdata(self.media_id)}</MediaId><Title>{cdata(self.title)}"
                f"</Title><Description>{cdata(self.description)}</Description></Video>")

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "video", "video": {
            "media_id": xml_safe(self.media_id), "thumb_media_id": "",
            "title": xml_safe(self.title), "description": xml_safe(self.description)}}


@dataclass(frozen=True, slots=True)
class MusicReply(Reply):
    """A music card."""

    thumb_media_id: str
    title: str = ""
    description: str = ""
    music_url: str = ""
    hq_music_url: str = ""

    msg_type: ClassVar[str] = "music"

    def body(self) -> str:
        return (f"<Music><Title>{cdata(self.title)}</Title>"
                f"<Description>{cdata(self.description)}</Description>"
                f"<MusicUrl>{cdata(self.music_url)}</MusicUrl>"
                f"<HQMusicUrl>{cdata(self.hq_music_url)}</HQMusicUrl>"
                f"<ThumbMediaId>{cdata(self.thumb_media_id)}</ThumbMediaId></Music>")

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "music", "music": {
            "title": xml_safe(self.title), "description": xml_safe(self.description),
            "musicurl": xml_safe(self.music_url), "hqmusicurl": xml_safe(self.hq_music_url),
            "thumb_media_id": xml_safe(self.thumb_media_id)}}


@dataclass(frozen=True, slots=True)
class NewsReply(Reply):
    """One article card: WeChat now shows exactly one, so the type allows exactly one."""

    title: str
    description: str = ""
    pic_url: str = ""
    url: str = ""

    msg_type: ClassVar[str] = "news"

    def body(self) -> str:
        return (f"<ArticleCount>1</ArticleCount><Articles><item><Title>{cdata(self.title)}</Title>"
                f"<Description>{cdata(self.description)}</Description>"
                f"<PicUrl>{cdata(self.pic_url)}</PicUrl><Url>{cdata(self.url)}</Url></item>"
                f"</Articles>")

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        article = {"title": xml_safe(self.title), "description": xml_safe(self.description),
                   "url": xml_safe(self.url), "picurl": xml_safe(self.pic_url)}
        return {"touser": openid, "msgtype": "news", "news": {"articles": [article]}}


@dataclass(frozen=True, slots=True)
class TransferCustomerService(Reply):
    """Hand the conversation to the human customer-service desk (optionally one account)."""

    kf_account: str = ""

    msg_type: ClassVar[str] = "transfer_customer_service"

    def body(self) -> str:
        if not self.kf_account:
            return ""
        return f"<TransInfo><KfAccount>{cdata(self.kf_account)}</KfAccount></TransInfo>"


@dataclass(frozen=True, slots=True)
class NoReply(Reply):
    """Answered with nothing to say: stops the search ("success"); None lets the next
    handler, the rules file and the defaults try."""

    msg_type: ClassVar[str] = "none"

    def body(self) -> str:
        return ""


def tail(reply: Reply) -> str:
    """The rest of a reply after its head (addressee, sender, time): its type and fields."""
    return f"<MsgType>{cdata(reply.msg_type)}</MsgType>{reply.body()}</xml>"


def _xml(to_user: str, from_user: str, create_time: int, rest: str) -> bytes:
    return (f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}"
            f"</FromUserName><CreateTime>{create_time}</CreateTime>{rest}").encode()


def render(reply: Reply, *, to_user: str, from_user: str, create_time: int | None = None) -> bytes:
    """The whole reply XML, addressed back to the sender from the account."""
    ct = int(time.time()) if create_time is None else create_time
    return _xml(to_user, from_user, ct, tail(reply))


# -- the dedup record: what a retry needs to get the same bytes ------------------------------
# Every push leaves its reply for WeChat's retries, hundreds of thousands in a busy minute,
# so what is kept is a small record, not the reply (bench/README.md, "Hand-written
# structures", has the sizes of both). The rest is deterministic: the retry
# carries the same push, and AES-CBC here has a fixed IV, so the record keeps the envelope's
# timestamp, nonce and random prefix. A text reply, nearly every reply, is [[text], time];
# any other [time, tail]: instances of versions that knew only the second shape read the
# first as unreadable and answer "success", never garbage, during a rolling deploy.


def encode(reply: Reply, *, to_user: str, from_user: str,
           crypto: Sealer | None = None, key: int = 0) -> tuple[bytes, bytes]:
    """The reply's bytes (sealed when `crypto` is given, under its key `key`) and its dedup
    record."""
    now = int(time.time())
    rest = tail(reply)
    # The record holds the text as rendered: orjson refuses what XML cannot carry anyway.
    fields: list[Any] = ([[xml_safe(reply.content)], now] if type(reply) is TextReply
                         else [now, rest])
    xml = _xml(to_user, from_user, now, rest)
    if crypto is not None:
        seed = os.urandom(20)  # one system call for the AES prefix and the nonce
        prefix, nonce = seed[:16], str(int.from_bytes(seed[16:], "big"))
        fields += [str(now), nonce, prefix.hex()]
        xml = crypto.wrap_reply(xml, timestamp=str(now), nonce=nonce, random_prefix=prefix,
                                key=key)
    return xml, orjson.dumps(fields)


def decode(record: bytes, *, to_user: str, from_user: str,
           crypto: Sealer | None = None, key: int = 0) -> bytes:
    """The bytes encode() gave for this record (a try in the other encoding: see below);
    ValueError when it is unreadable."""
    if record == SUCCESS:
        return SUCCESS
    try:
        create_time, rest, *sealed = orjson.loads(record)
        if sealed and crypto is None:
            # One message, two encodings: WeChat retries in the shape it first sent, so a
            # plaintext try of a sealed message is a captured push stripped of its
            # encryption. It gets nothing the first try sealed.
            return SUCCESS
        if isinstance(create_time, list):  # a text reply kept as its text
            create_time, rest = rest, tail(TextReply(str(create_time[0])))
        xml = _xml(to_user, from_user, int(create_time), str(rest))
        if sealed and crypto is not None:
            timestamp, nonce, prefix = sealed
            xml = crypto.wrap_reply(xml, timestamp=str(timestamp), nonce=str(nonce),
                                    random_prefix=bytes.fromhex(prefix), key=key)
        elif crypto is not None:
            # A sealed try of a message first answered in plaintext (the console switched
            # modes between tries): what went out in the clear may go out sealed.
            xml = crypto.wrap_reply(xml, key=key)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unreadable dedup record: {exc!r}") from exc
    return xml
