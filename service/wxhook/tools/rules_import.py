"""The console's configuration (get_current_autoreply_info, get_current_selfmenu_info) as a
rules file; what has no equivalent is written as a comment saying why."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from wxhook.rules import CONSOLE_DEFAULT_ONCE_PER

# The API menu's own button types: copied as they are.
_FIELDS = ("type", "name", "key", "url", "appid", "pagepath", "media_id", "article_id")
_CONSOLE_ONLY = ("text", "img", "voice", "video", "news")
# What a YAML comment (and a line on the terminal) may hold: YAML's printable characters
# without its line breaks (\n \r \x85 \u2028 \u2029); anything else is written escaped.
_NOT_IN_A_LINE = re.compile("[^\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd"
                            "\U00010000-\U0010ffff]")


class _Import:
    def __init__(self) -> None:
        self.notes: dict[str, list[str]] = {}
        self.clicks: dict[str, Any] = {}

    def note(self, section: str, text: str) -> None:
        # The console's names and texts are the follower-facing owner's: any character at all.
        self.notes.setdefault(section, []).append(_one_line(text))

    def reply(self, raw: Any, section: str, where: str) -> Any | None:
        """One console reply ({type, content} or a menu's {type, value}) as a reply form."""
        info = _obj(raw)
        kind = info.get("type")
        content = str(info.get("content", info.get("value", "")) or "")
        if kind == "text":
            return content or self._skip(section, where, "an empty text")
        if kind == "news":
            articles = _items(_obj(info.get("news_info")).get("list"))
            if not articles:
                return self._skip(section, where, "a news reply without news_info")
            if len(articles) > 1:
                self.note(section, f"{where}: {len(articles)} articles; WeChat shows one "
                          "in a reply, so only the first was kept")
            a = articles[0]
            return {"news": [{"title": str(a.get("title", "")),
                              "description": str(a.get("digest", "")),
                              "url": str(a.get("content_url", "")),
                              "picurl": str(a.get("cover_url", ""))}]}
        if kind in ("img", "voice", "video"):
            if content.startswith(("http://", "https://")):
                return self._skip(section, where, f"a {kind} given as a URL ({content[:60]}"
                                  "...) has no media_id to reply with; upload it as "
                                  "permanent material and add it by media_id")
            if not content:
                return self._skip(section, where, f"a {kind} without media_id")
            return {"image" if kind == "img" else kind: {"media_id": content}}
        return self._skip(section, where, f"reply type {kind!r} is not supported")

    def _skip(self, section: str, where: str, why: str) -> Any | None:
        self.note(section, f"{where}: not imported: {why}")
        return None

    def button(self, raw: Any, where: str) -> dict[str, Any] | None:
        b = _obj(raw)
        subs = b.get("sub_button")
        subs = _items(subs.get("list") if isinstance(subs, dict) else subs)
        if subs:
            kept = _kept(self.button(s, f"{where}.sub_button[{j}] ({s.get('name')})")
                         for j, s in enumerate(subs))
            return {"name": str(b.get("name", "")), "sub_button": kept} if kept else None
        kind = b.get("type")
        if kind not in _CONSOLE_ONLY:
            return {k: b[k] for k in _FIELDS if k in b}
        # The API menu has no button that replies by itself: a click button whose key
        # answers through `clicks` does the same.
        answer = self.reply(b, "menu", where)
        if answer is None:
            return None
        key = f"CONSOLE_{kind.upper()}_{len(self.clicks) + 1}"
        self.clicks[key] = answer
        return {"type": "click", "name": str(b.get("name", "")), "key": key}


def console_to_rules(autoreply: Any, selfmenu: Any) -> tuple[str, list[str]]:
    """The rules file's text, and what could not be reproduced (one line each)."""
    # Answers from the network: any shape is read as far as it makes sense, never trusted.
    autoreply, selfmenu = _obj(_whole(autoreply)), _obj(_whole(selfmenu))
    imp = _Import()
    doc: dict[str, Any] = {}
    welcome = autoreply.get("add_friend_autoreply_info")
    if autoreply.get("is_add_friend_reply_open") and welcome and (
            got := imp.reply(welcome, "subscribe", "add_friend_autoreply_info")) is not None:
        doc["subscribe"] = {"reply": got}
    keywords = []
    for i, rule in enumerate(_items(_obj(autoreply.get("keyword_autoreply_info")).get("list"))):
        name = str(rule.get("rule_name") or f"rule-{i + 1}")
        out: dict[str, Any] = {"name": name}
        for kw in _items(rule.get("keyword_list_info")):
            mode = "equal" if kw.get("match_mode") == "equal" else "contain"
            out.setdefault(mode, []).append(str(kw.get("content", "")))
        out["mode"] = "reply_all" if rule.get("reply_mode") == "reply_all" else "random_one"
        replies = _kept(imp.reply(r, "keywords", f"{name}: reply_list_info[{j}]")
                        for j, r in enumerate(_items(rule.get("reply_list_info"))))
        if replies:
            keywords.append({**out, "replies": replies})
        else:
            imp.note("keywords", f"{name}: rule not imported: none of its replies could be")
    if keywords:
        doc["keywords"] = keywords
    default = autoreply.get("message_default_autoreply_info")
    if autoreply.get("is_autoreply_open") and default and (
            got := imp.reply(default, "default", "message_default_autoreply_info")) is not None:
        # The console answers a follower's messages with it at most once an hour.
        doc["default"] = {"reply": got, "once_per": CONSOLE_DEFAULT_ONCE_PER}
    if selfmenu.get("is_menu_open"):
        listed = _items(_obj(selfmenu.get("selfmenu_info")).get("button"))
        buttons = _kept(imp.button(b, f"button[{i}] ({b.get('name')})")
                        for i, b in enumerate(listed))
        if buttons:
            doc["menu"] = {"button": buttons}
    elif selfmenu:
        imp.note("menu", "the console's menu is switched off: no menu imported")
    if imp.clicks:
        doc["clicks"] = imp.clicks
    parts = [("# Imported from the WeChat console by `wxhook rules import`.\n"
              "# Check it with `wxhook rules check FILE`; "
              "push the menu with `wxhook menu push`.\n")]
    for section in ("subscribe", "keywords", "default", "menu", "clicks"):
        notes = imp.notes.get(section, [])
        text = "".join(f"# {n}\n" for n in notes)
        if section in doc:
            text += yaml.safe_dump({section: doc[section]}, allow_unicode=True, sort_keys=False,
                                   width=100)
        if text:
            parts.append(text)
    return "\n".join(parts), [n for s in imp.notes.values() for n in s]


def _whole(value: Any) -> Any:
    """`value` with each lone surrogate (JSON allows "\\ud800") as U+FFFD: no text to write."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {_whole(k): _whole(v) for k, v in value.items()}
    return value


def _one_line(text: str) -> str:
    return _NOT_IN_A_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _kept(items: Iterable[Any]) -> list[Any]:
    return [item for item in items if item is not None]


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
