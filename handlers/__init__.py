"""The handler API in one place: `from handlers import Router, Context, TextMessage, ...`.

Everything a handler module needs is here (the test client is handlers.testing, which
builds a whole app); what is not exported here is private and may change.
"""

from service.messages import (
    EventMessage,
    ImageMessage,
    InboundMessage,
    JobFinishEvent,
    LinkMessage,
    LocationEvent,
    LocationMessage,
    LocationSelectEvent,
    MenuEvent,
    PicEvent,
    ScanCodeEvent,
    ScanEvent,
    SubscribeEvent,
    TextMessage,
    UnsubscribeEvent,
    VideoMessage,
    VoiceMessage,
)
from service.replies import (
    ImageReply,
    MusicReply,
    NewsReply,
    NoReply,
    Reply,
    TextReply,
    TransferCustomerService,
    VideoReply,
    VoiceReply,
)

from .context import Context
from .decorators import Decorator
from .filters import Filter
from .middleware import Answer, Middleware, Next
from .router import Router
from .state import STATE_LIMIT

__all__ = [
    "STATE_LIMIT",
    "Answer",
    "Context",
    "Decorator",
    "EventMessage",
    "Filter",
    "ImageMessage",
    "ImageReply",
    "InboundMessage",
    "JobFinishEvent",
    "LinkMessage",
    "LocationEvent",
    "LocationMessage",
    "LocationSelectEvent",
    "MenuEvent",
    "Middleware",
    "MusicReply",
    "NewsReply",
    "Next",
    "NoReply",
    "PicEvent",
    "Reply",
    "Router",
    "ScanCodeEvent",
    "ScanEvent",
    "SubscribeEvent",
    "TextMessage",
    "TextReply",
    "TransferCustomerService",
    "UnsubscribeEvent",
    "VideoMessage",
    "VideoReply",
    "VoiceMessage",
    "VoiceReply",
]
