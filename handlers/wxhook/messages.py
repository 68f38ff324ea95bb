"""Inbound pushes as typed, frozen messages (pipeline step 3); wxhook.server.xmldoc reads XML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from wxhook.errors import XMLError

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What every push has; handlers get a subclass. Unknown types stay this generic form."""

    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    msg_id: str
    raw: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)

    @property
    def openid(self) -> str:
        """The follower who sent the push."""
        return self.from_user

    @property
    def event(self) -> str:
        """The event name lower-cased ("" for messages); WeChat's casing varies by event."""
        return ""

    def dedup_key(self) -> str:
        """MsgId for messages; sender+time+event+key for events (they carry no MsgId)."""
        if self.msg_id:
            return f"m:{self.msg_id}"
        return f"e:{self.from_user}:{self.create_time}:{self.event}:{self.raw.get('EventKey', '')}"


@dataclass(frozen=True, slots=True)
class TextMessage(InboundMessage):
    """A follower typed text."""

    content: str = ""


@dataclass(frozen=True, slots=True)
class ImageMessage(InboundMessage):
    """A follower sent a picture."""

    pic_url: str = ""
    media_id: str = ""


@dataclass(frozen=True, slots=True)
class VoiceMessage(InboundMessage):
    """A voice clip; `recognition` is set when speech recognition is on."""

    media_id: str = ""
    format: str = ""
    recognition: str = ""


@dataclass(frozen=True, slots=True)
class VideoMessage(InboundMessage):
    """A video or short video."""

    media_id: str = ""
    thumb_media_id: str = ""


@dataclass(frozen=True, slots=True)
class LocationMessage(InboundMessage):
    """A location the follower shared."""

    latitude: float = 0.0
    longitude: float = 0.0
    scale: int = 0
    label: str = ""


@dataclass(frozen=True, slots=True)
class LinkMessage(InboundMessage):
    """A link the follower shared."""

    title: str = ""
    description: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class EventMessage(InboundMessage):
    """Any event; `event` is lower-cased, `event_key` as sent."""

    event_name: str = ""
    event_key: str = ""

    @property
    def event(self) -> str:
        return self.event_name.lower()


@dataclass(frozen=True, slots=True)
class SubscribeEvent(EventMessage):
    """A new follower; through a parameter QR code when `scene` is not None."""

    ticket: str = ""

    @property
    def scene(self) -> str | None:
        """The QR scene of a QR-code subscribe (EventKey without `qrscene_`)."""
        key = self.event_key
        return key[len("qrscene_"):] if key.startswith("qrscene_") else None


@dataclass(frozen=True, slots=True)
class UnsubscribeEvent(EventMessage):
    """A follower unfollowed: no reply reaches them any more."""


@dataclass(frozen=True, slots=True)
class ScanEvent(EventMessage):
    """An existing follower scanned a parameter QR code; `event_key` is the scene."""

    ticket: str = ""


@dataclass(frozen=True, slots=True)
class LocationEvent(EventMessage):
    """The periodic location report."""

    latitude: float = 0.0
    longitude: float = 0.0
    precision: float = 0.0


@dataclass(frozen=True, slots=True)
class MenuEvent(EventMessage):
    """CLICK, VIEW and view_miniprogram menu events."""

    menu_id: str = ""


@dataclass(frozen=True, slots=True)
class ScanCodeEvent(EventMessage):
    """scancode_push / scancode_waitmsg."""

    scan_type: str = ""
    scan_result: str = ""


@dataclass(frozen=True, slots=True)
class PicEvent(EventMessage):
    """pic_sysphoto / pic_photo_or_album / pic_weixin."""

    count: int = 0
    pic_md5s: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LocationSelectEvent(EventMessage):
    """location_select from a menu."""

    latitude: float = 0.0
    longitude: float = 0.0
    scale: int = 0
    label: str = ""
    poiname: str = ""


@dataclass(frozen=True, slots=True)
class JobFinishEvent(EventMessage):
    """TEMPLATESENDJOBFINISH / MASSSENDJOBFINISH (their id is MsgID, capital D)."""

    status: str = ""
    total_count: int = 0
    filter_count: int = 0
    sent_count: int = 0
    error_count: int = 0


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def _float(v: str | None) -> float:
    try:
        return float(v or 0)
    except ValueError:
        return 0.0


def _message_extras(f: dict[str, str]) -> tuple[type[InboundMessage], dict[str, object]]:
    t = f.get("MsgType", "").lower()
    if t == "text":
        return TextMessage, {"content": f.get("Content", "")}
    if t == "image":
        return ImageMessage, {"pic_url": f.get("PicUrl", ""), "media_id": f.get("MediaId", "")}
    if t == "voice":
        return VoiceMessage, {"media_id": f.get("MediaId", ""), "format": f.get("Format", ""),
                              "recognition": f.get("Recognition", "")}
    if t in ("video", "shortvideo"):
        return VideoMessage, {"media_id": f.get("MediaId", ""),
                              "thumb_media_id": f.get("ThumbMediaId", "")}
    if t == "location":
        return LocationMessage, {"latitude": _float(f.get("Location_X")),
                                 "longitude": _float(f.get("Location_Y")),
                                 "scale": _int(f.get("Scale")), "label": f.get("Label", "")}
    if t == "link":
        return LinkMessage, {"title": f.get("Title", ""), "description": f.get("Description", ""),
                             "url": f.get("Url", "")}
    return InboundMessage, {}


def _event_extras(f: dict[str, str]) -> tuple[type[EventMessage], dict[str, object]]:
    e = f.get("Event", "").lower()
    if e == "subscribe":
        return SubscribeEvent, {"ticket": f.get("Ticket", "")}
    if e == "unsubscribe":
        return UnsubscribeEvent, {}
    if e == "scan":
        return ScanEvent, {"ticket": f.get("Ticket", "")}
    if e == "location":
        return LocationEvent, {"latitude": _float(f.get("Latitude")),
                               "longitude": _float(f.get("Longitude")),
                               "precision": _float(f.get("Precision"))}
    if e in ("click", "view", "view_miniprogram"):
        return MenuEvent, {"menu_id": f.get("MenuId", "")}
    if e in ("scancode_push", "scancode_waitmsg"):
        return ScanCodeEvent, {"scan_type": f.get("ScanCodeInfo/ScanType", ""),
                               "scan_result": f.get("ScanCodeInfo/ScanResult", "")}
    if e in ("pic_sysphoto", "pic_photo_or_album", "pic_weixin"):
        md5s = f.get("SendPicsInfo/PicList")
        return PicEvent, {"count": _int(f.get("SendPicsInfo/Count")),
                          "pic_md5s": tuple(md5s.split("\n")) if md5s else ()}
    if e == "location_select":
        here = "SendLocationInfo/"
        return LocationSelectEvent, {"latitude": _float(f.get(here + "Location_X")),
                                     "longitude": _float(f.get(here + "Location_Y")),
                                     "scale": _int(f.get(here + "Scale")),
                                     "label": f.get(here + "Label", ""),
                                     "poiname": f.get(here + "Poiname", "")}
    if e in ("templatesendjobfinish", "masssendjobfinish"):
        return JobFinishEvent, {"status": f.get("Status", ""),
                                "total_count": _int(f.get("TotalCount")),
                                "filter_count": _int(f.get("FilterCount")),
                                "sent_count": _int(f.get("SentCount")),
                                "error_count": _int(f.get("ErrorCount"))}
    return EventMessage, {}


def build_message(f: dict[str, str]) -> InboundMessage:
    """Type the fields (wxhook.server.xmldoc: top-level tags and documented nested paths); raise
    XMLError when the envelope fields are missing."""
    missing = [k for k in ("ToUserName", "FromUserName", "MsgType") if not f.get(k)]
    if missing:
        raise XMLError("missing " + ", ".join(missing))
    ct = f.get("CreateTime", "")
    # ASCII only and bounded: str.isdigit() accepts "²", which int() rejects (a 500).
    if not (ct.isascii() and ct.isdigit() and len(ct) <= 20):
        raise XMLError("CreateTime must be an integer")
    common: dict[str, object] = {
        "to_user": f["ToUserName"], "from_user": f["FromUserName"], "create_time": int(ct),
        "msg_type": f["MsgType"].lower(),
        # Job-finish events spell it MsgID: without it two jobs finishing in one second
        # from one sender would share a dedup key (and the second get the first's reply).
        "msg_id": f.get("MsgId") or f.get("MsgID") or "",
        "raw": MappingProxyType(f),
    }
    cls: type[InboundMessage]
    if common["msg_type"] == "event":
        cls, extra = _event_extras(f)
        extra["event_name"] = f.get("Event", "")
        extra["event_key"] = f.get("EventKey", "")
    else:
        cls, extra = _message_extras(f)
    return cls(**common, **extra)  # type: ignore[arg-type]
