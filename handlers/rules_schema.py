"""What a rules file may contain, and what each part means.

The checker (rules.py, rules_replies.py) refuses anything not named here, and the
configuration reference on the documentation site is generated from these tables, so the
two cannot drift apart.
"""

from __future__ import annotations

# The file's sections, in the order the reference lists them.
SECTIONS: dict[str, str] = {
    "subscribe": "被关注回复: the greeting a new follower gets, also sent on a follower's SCAN "
                 "of a parametric QR code named in `scenes`. A reply alone is short for "
                 "`{reply: ...}`.",
    "keywords": "关键词回复: a list of rules; the first that matches a text message answers, "
                "in file order.",
    "default": "收到消息回复: the reply to a message no rule matched. A reply alone is short for "
               "`{reply: ...}`.",
    "menu": "自定义菜单: the custom menu as cgi-bin/menu/create takes it (`{button: [...]}`), "
            "pushed by `wxhook menu push` and checked against WeChat's limits first.",
    "clicks": "CLICK menu events: a menu key mapped to a reply.",
}

SUBSCRIBE_FIELDS: dict[str, str] = {
    "reply": "the greeting: a reply, a list of replies, or `{mode, replies}`",
    "anonymous": "the greeting's text when the follower's name is not known in time; "
                 "cannot contain `{nickname}`",
    "scenes": "a greeting per parametric QR code: scene -> reply (EventKey `qrscene_<scene>` "
              "on subscribe, `<scene>` on SCAN)",
}

KEYWORD_FIELDS: dict[str, str] = {
    "name": "the rule's name, unique in the file; the push log says `handler: rules:<name>`",
    "equal": "texts the whole message must be (trimmed, case-insensitive)",
    "contain": "texts found anywhere in the message (case-insensitive)",
    "regex": "regular expressions searched in the message (case-insensitive), run on RE2 in "
             "linear time: no back-references or look-around",
    "mode": "how the replies are used (see the modes below)",
    "replies": "the rule's replies, a list; at least one",
}

DEFAULT_FIELDS: dict[str, str] = {
    "reply": "the reply: a reply, a list of replies, or `{mode, replies}`",
    "once_per": "seconds per follower between two default replies; 0 = every message",
}

MODES: dict[str, str] = {
    "random_one": "one of the replies, chosen at random",
    "reply_all": "every reply in order: the first as the passive reply, the others by "
                 "customer-service message once the first is out",
}

# Fields of each reply form, the required one first, named as WeChat's JSON names them. A
# bare text (or `text: ...`) is a text reply.
REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    "news": ("title", "description", "picurl", "url"),
    "image": ("media_id",), "voice": ("media_id",),
    "video": ("media_id", "title", "description"),
    "music": ("thumb_media_id", "title", "description", "musicurl", "hqmusicurl"),
}
REPLY_TYPES = ("text", *REPLY_FIELDS)
