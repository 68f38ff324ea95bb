"""Reply forms of the rules file: a text, {text|news|image|voice|video|music: ...}, a list of
them, or {mode, replies}; checked with the place of each problem."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from wxhook.longtext import CUSTOM_BYTES, ELLIPSIS, PASSIVE_BYTES, cut, size, split
from wxhook.replies import (
    ImageReply,
    MusicReply,
    NewsReply,
    Reply,
    TextReply,
    VideoReply,
    VoiceReply,
)
from wxhook.rules_schema import MODES, REPLY_FIELDS, REPLY_TYPES
from wxhook.rules_yaml import Seq, YamlMap

Mode = Literal["random_one", "reply_all"]
NICKNAME = "{nickname}"
# What a name may add where {nickname} stands, for the size warning (16 four-byte characters);
# at run time the check is on the text as sent, the name filled in.
NAME_BYTES = 64
# The fields of each reply a follower reads: where {nickname} may appear and is filled in.
TEXT_FIELDS: dict[type[Reply], tuple[str, ...]] = {
    TextReply: ("content",), NewsReply: ("title", "description"),
    VideoReply: ("title", "description"), MusicReply: ("title", "description"),
}


def texts(reply: Reply) -> list[str]:
    """The texts of `reply` a follower reads (where {nickname} may appear)."""
    return [getattr(reply, f) for f in TEXT_FIELDS.get(type(reply), ())]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a rule says: its replies and how to choose (one at random, or all in order)."""

    replies: tuple[Reply, ...]
    mode: Mode = "random_one"
    uses_nickname: bool = False



class ReplyChecker:
    """Collects problems with their places instead of stopping at the first; reads replies."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def add(self, line: int, where: str, message: str) -> None:
        self.problems.append(f"{self.name}:{line}: {where}: {message}")

    def warn(self, line: int, where: str, message: str) -> None:
        """Something valid that will not work as the owner may expect."""
        self.warnings.append(f"{self.name}:{line}: {where}: warning: {message}")

    def check_size(self, text: str, line: int, where: str, *, passive: bool) -> None:
        """Warn about a text longer than one WeChat message, and say how it will be sent."""
        filled = text.replace(NICKNAME, "x" * NAME_BYTES)  # the longest a name makes it
        most = size(filled)
        if most <= (PASSIVE_BYTES if passive else CUSTOM_BYTES):
            return
        length = f"{most:,} bytes" + (f" with a {NAME_BYTES}-byte name" if NICKNAME in text
                                      else "")
        if passive:
            _, rest = cut(filled, PASSIVE_BYTES)
            count = len(split(rest, CUSTOM_BYTES))
            how = (f"WeChat shows no passive text reply over {PASSIVE_BYTES:,} bytes: it goes "
                   f"out as a passive reply of up to {PASSIVE_BYTES:,} bytes and about {count} "
                   f"customer-service message(s) after it, in order (an account without them, "
                   f"errcode 48001, sends the first part ending in {ELLIPSIS!r})")
        else:
            count = len(split(filled, CUSTOM_BYTES))
            how = (f"it goes out as about {count} customer-service messages of up to "
                   f"{CUSTOM_BYTES:,} bytes each, in order")
        if count > 3:
            how += ("; a follow, scan or menu click allows 3 customer-service messages and a "
                    "message 5: past that WeChat refuses the rest (45047)")
        self.warn(line, where, f"a text of {length}: {how}")

    def _mapping(self, node: Any, line: int, where: str, allowed: tuple[str, ...]) -> bool:
        if not isinstance(node, YamlMap):
            self.add(line, where, f"must be a mapping of {', '.join(allowed)}")
            return False
        for key in node:
            if key not in allowed:
                self.add(node.lines[key], f"{where}.{key}",
                         f"unknown field (expected {', '.join(allowed)})")
        return True

    def answer(self, node: Any, line: int, where: str, *, rule_form: bool = False) -> Answer | None:
        """A reply, a list of replies, or {mode, replies}."""
        mode: Any = "random_one"
        if isinstance(node, YamlMap) and (rule_form or "replies" in node or "mode" in node):
            if not rule_form and not self._mapping(node, line, where, ("mode", "replies")):
                return None
            mode = node.get("mode", "random_one")
            if mode not in MODES:
                self.add(node.lines.get("mode", line), f"{where}.mode",
                         f"must be one of {', '.join(MODES)}")
            line, node = node.lines.get("replies", line), node.get("replies")
            where = f"{where}.replies"
            if node is None:
                self.add(line, where, "missing: a rule needs at least one reply")
                return None
        items = node if isinstance(node, Seq) else Seq([node], line=line, lines=[line])
        if not items:
            self.add(line, where, "empty: give at least one reply")
            return None
        places = [(items.lines[i], f"{where}[{i}]" if node is items else where)
                  for i in range(len(items))]
        replies = [self.reply(item, *places[i]) for i, item in enumerate(items)]
        if any(r is None for r in replies):
            return None
        got = tuple(r for r in replies if r is not None)
        for i, r in enumerate(got):
            if isinstance(r, TextReply):  # with reply_all, replies 2..n are follow-ups
                self.check_size(r.content, *places[i], passive=i == 0 or mode != "reply_all")
        return Answer(got, mode if mode in MODES else "random_one",
                      any(NICKNAME in text for r in got for text in texts(r)))

    def reply(self, node: Any, line: int, where: str) -> Reply | None:
        """One reply in any of its forms."""
        if isinstance(node, str):
            if not node.strip():
                self.add(line, where, "empty reply")
                return None
            return TextReply(node)
        if not isinstance(node, YamlMap) or len(node) != 1:
            self.add(line, where, f"a reply is a text or one of {', '.join(REPLY_TYPES)}: ...")
            return None
        (kind, body), = node.items()
        line = node.lines[kind]
        where = f"{where}.{kind}"
        if kind not in REPLY_TYPES:
            self.add(line, where, f"unknown reply type {kind!r} (expected "
                     f"{', '.join(REPLY_TYPES)})")
            return None
        if kind == "text":
            return self.reply(body, line, where)
        if kind == "news":
            if isinstance(body, Seq) and len(body) == 1:
                body = body[0]
            elif isinstance(body, Seq):
                self.add(line, where, f"{len(body)} articles: WeChat shows exactly one")
                return None
        fields = REPLY_FIELDS[kind]
        if not isinstance(body, YamlMap):
            self.add(line, where, f"must be a mapping of {', '.join(fields)}")
            return None
        bad = [k for k in body if k not in fields]
        for k in bad:
            self.add(body.lines[k], f"{where}.{k}", f"unknown field (expected {', '.join(fields)})")
        need = fields[0]
        if not (isinstance(body.get(need), str) and body[need].strip()):
            self.add(body.lines.get(need, line), f"{where}.{need}", "missing or empty")
            return None
        if bad or not all(isinstance(v, str) for v in body.values()):
            if not bad:
                self.add(line, where, "every field is a text")
            return None
        values = [body.get(f, "") for f in fields]
        return _BUILD[kind](*values)


_BUILD: dict[str, Callable[..., Reply]] = {
    "news": NewsReply, "image": ImageReply, "voice": VoiceReply, "video": VideoReply,
    "music": MusicReply}
