"""WeChat's custom-menu rules (cgi-bin/menu/create), checked before a menu is pushed.

One module for both sides: `wxhook rules check` and `menu push` refuse what WeChat would
refuse, and the sandbox answers the same errcodes WeChat gives for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_BUTTONS = 3
MAX_SUB_BUTTONS = 5
NAME_BYTES = 16       # a first-level button's name, UTF-8 bytes
SUB_NAME_BYTES = 60   # a sub-button's name
KEY_BYTES = 128
URL_BYTES = 1024

# The field each button type needs (miniprogram also needs appid and pagepath).
BUTTON_FIELDS = {
    "click": ("key",), "scancode_push": ("key",), "scancode_waitmsg": ("key",),
    "pic_sysphoto": ("key",), "pic_photo_or_album": ("key",), "pic_weixin": ("key",),
    "location_select": ("key",), "view": ("url",), "miniprogram": ("url", "appid", "pagepath"),
    "media_id": ("media_id",), "view_limited": ("media_id",), "article_id": ("article_id",),
    "article_view_limited": ("article_id",),
}

# errcodes of menu/create, as WeChat documents them.
MENU_ERRORS = {
    40016: "invalid button size (1-3 buttons)",
    40017: "invalid button type",
    40018: "invalid button name size (at most 16 bytes)",
    40019: "invalid button key size (at most 128 bytes)",
    40023: "invalid sub button size (at most 5)",
    40024: "invalid sub button type",
    40025: "invalid sub button name size (at most 60 bytes)",
    40026: "invalid sub button key size (at most 128 bytes)",
    40027: "invalid sub button url size (at most 1024 bytes)",
    40054: "invalid sub button url domain",
    40055: "invalid button url domain",
    46003: "menu no exist",
}


@dataclass(frozen=True, slots=True)
class MenuProblem:
    """One thing WeChat would refuse: where (e.g. "button[1].sub_button[0].name"), what, errcode."""

    where: str
    message: str
    errcode: int


def menu_problems(menu: Any) -> list[MenuProblem]:
    """Everything in `menu` ({"button": [...]}) that menu/create would refuse."""
    if not isinstance(menu, dict) or not isinstance(menu.get("button"), list):
        return [MenuProblem("button", "a menu is {button: [...]}", 40016)]
    buttons = menu["button"]
    out: list[MenuProblem] = []
    if not 1 <= len(buttons) <= MAX_BUTTONS:
        out.append(MenuProblem("button", f"{len(buttons)} buttons; WeChat allows 1 to "
                               f"{MAX_BUTTONS}", 40016))
    for i, button in enumerate(buttons):
        out += _button(button, f"button[{i}]", top=True)
    return out


def _button(b: Any, where: str, *, top: bool) -> list[MenuProblem]:
    if not isinstance(b, dict):
        return [MenuProblem(where, "a button is a mapping", 40017 if top else 40024)]
    out: list[MenuProblem] = []
    name = b.get("name")
    limit = NAME_BYTES if top else SUB_NAME_BYTES
    if not isinstance(name, str) or not name:
        out.append(MenuProblem(f"{where}.name", "every button needs a name",
                               40018 if top else 40025))
    elif len(name.encode()) > limit:
        out.append(MenuProblem(f"{where}.name", f"{len(name.encode())} bytes; at most {limit} "
                               "(a Chinese character takes 3)", 40018 if top else 40025))
    subs = b.get("sub_button")
    if top and subs is not None and subs != []:
        if not isinstance(subs, list) or not 1 <= len(subs) <= MAX_SUB_BUTTONS:
            n = len(subs) if isinstance(subs, list) else "no list of"
            out.append(MenuProblem(f"{where}.sub_button", f"{n} sub-buttons; WeChat allows 1 "
                                   f"to {MAX_SUB_BUTTONS}", 40023))
        if isinstance(subs, list):
            for j, sub in enumerate(subs):
                out += _button(sub, f"{where}.sub_button[{j}]", top=False)
        return out
    if not top and subs:
        out.append(MenuProblem(f"{where}.sub_button", "sub-buttons cannot have sub-buttons",
                               40024))
    kind = b.get("type")
    if kind not in BUTTON_FIELDS:
        out.append(MenuProblem(f"{where}.type", f"unknown button type {kind!r} (one of "
                               f"{', '.join(BUTTON_FIELDS)})", 40017 if top else 40024))
        return out
    for field in BUTTON_FIELDS[kind]:
        value = b.get(field)
        if not isinstance(value, str) or not value:
            out.append(MenuProblem(f"{where}.{field}", f"a {kind} button needs {field}",
                                   40017 if top else 40024))
    key = b.get("key")
    if isinstance(key, str) and len(key.encode()) > KEY_BYTES:
        out.append(MenuProblem(f"{where}.key", f"{len(key.encode())} bytes; at most "
                               f"{KEY_BYTES}", 40019 if top else 40026))
    url = b.get("url")
    if isinstance(url, str) and len(url.encode()) > URL_BYTES:
        out.append(MenuProblem(f"{where}.url", f"{len(url.encode())} bytes; at most "
                               f"{URL_BYTES}", 40027))
    elif isinstance(url, str) and url and not url.startswith(("http://", "https://")):
        out.append(MenuProblem(f"{where}.url", "must start with http:// or https://",
                               40055 if top else 40054))
    return out
