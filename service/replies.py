"""Passive replies: frozen types and their XML, CDATA-safe (pipeline step 7)."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

SUCCESS = b"success"  # WeChat's "no reply": anything else invalid shows the follower an error

# Characters XML 1.0 forbids: a handler echoing them would make WeChat reject the reply.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def cdata(value: str) -> str:
    """Wrap in CDATA; a "]]>" inside is split across two sections so the XML stays valid."""
    if not (value.isascii() and value.isprintable()):  # (printable ASCII has none of them)
        value = _INVALID_XML.sub("", value)
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
        return {"touser": openid, "msgtype": "text", "text": {"content": self.content}}


@dataclass(frozen=True, slots=True)
class ImageReply(Reply):
    """An image already uploaded as media."""

    media_id: str

    msg_type: ClassVar[str] = "image"

    def body(self) -> str:
        return f"<Image><MediaId>{cdata(self.media_id)}</MediaId></Image>"

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "image", "image": {"media_id": self.media_id}}


@dataclass(frozen=True, slots=True)
class VoiceReply(Reply):
    """A voice clip already uploaded as media."""

    media_id: str

    msg_type: ClassVar[str] = "voice"

    def body(self) -> str:
        return f"<Voice><MediaId>{cdata(self.media_id)}</MediaId></Voice>"

    def custom_message(self, openid: str) -> dict[str, Any] | None:
        return {"touser": openid, "msgtype": "voice", "voice": {"media_id": self.media_id}}


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
        article = {"title": self.title, "description": self.description,
                   "url": self.url, "picurl": self.pic_url}
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


def render(reply: Reply, *, to_user: str, from_user: str, create_time: int | None = None) -> bytes:
    """The whole reply XML, addressed back to the sender from the account.

    These bytes are the reply's one form: the dedup record keeps them (sealed, when the push
    was encrypted) and every retry gets them again as they are.
    """
    ct = int(time.time()) if create_time is None else create_time
    return (f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}"
            f"</FromUserName><CreateTime>{ct}</CreateTime><MsgType>{cdata(reply.msg_type)}"
            f"</MsgType>{reply.body()}</xml>").encode()
