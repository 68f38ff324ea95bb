"""The handler API in one place: `from wxhook import Router, Context, TextMessage, ...`.

Everything a handler module needs is here (the test client is wxhook.testing, which
builds a whole app); what is not exported here is private and may change.
"""

from pkgutil import extend_path

from wxhook.context import Context
from wxhook.decorators import Decorator
from wxhook.filters import Filter
from wxhook.messages import (
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
from wxhook.middleware import Answer, Middleware, Next
from wxhook.replies import (
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
from wxhook.router import Router
from wxhook.state import STATE_LIMIT

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

# The package has two source folders in the repository (handlers/wxhook: this API;
# service/wxhook: the server, its tools and the test client); installed, they are one.
__path__ = extend_path(__path__, __name__)
