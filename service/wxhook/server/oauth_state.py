"""What an OAuth login carries between /oauth/login and the callback: one bounded cookie.

Each login used to set a cookie of its own (~2.9 KB with a long `next`), so a browser that
started three logins sent a Cookie header nginx refused ("Request Header Or Cookie Too
Large") and every callback after that failed. One cookie now holds the newest LOGINS_KEPT
logins of a browser (two tabs signing in at once still both work), each `next` at most
MAX_NEXT_BYTES: the header stays under ~2.5 KB however many logins a browser starts.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

DEFAULT_NEXT = "/me"
COOKIE = "wxhook_oauth"
PATH = "/oauth/"        # /oauth/login reads the logins in progress, the callback too
# With an accounts file each account's cookie is COOKIE_{name} on /oauth/{name}/ only.
LOGINS_KEPT = 3         # newest logins kept; an older one's callback is refused as forged
MAX_NEXT_BYTES = 512    # a `next` as stored (UTF-8, JSON-escaped); longer is refused

Sign = Callable[[str, dict[str, Any]], str]
Unsign = Callable[..., dict[str, Any] | None]


def next_size(raw: str) -> int:
    """The bytes `raw` takes in the cookie (a quote costs two)."""
    return len(json.dumps(raw, ensure_ascii=False).encode()) - 2


def safe_next(raw: str | None, default: str = DEFAULT_NEXT) -> str:
    """`raw` if it is a plain path on this site, else `default` (no open redirect)."""
    if not raw or next_size(raw) > MAX_NEXT_BYTES or " " in raw:
        return default
    layer = raw
    # Check every decoding layer: a proxy or framework may decode once more (%2F%2F -> //).
    for _ in range(4):
        # A space is fine once decoded ("/a%20b"); other whitespace and controls never are.
        if (not layer.startswith("/") or layer.startswith("//") or "\\" in layer
                or any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in layer)):
            return default
        decoded = unquote(layer)
        if decoded == layer:  # a next that starts another login would only loop
            return default if layer.startswith("/oauth/") else raw
        layer = decoded
    return default  # more encoding layers than any honest link has


@dataclass(frozen=True, slots=True)
class Login:
    """One login in progress: its state, where it goes next, its scope, when it began."""

    state: str
    next: str
    scope: str
    began: int


class LoginCookie:
    """The signed value of the cookie that holds a browser's logins in progress."""

    def __init__(self, sign: Sign, unsign: Unsign, *, ttl: int) -> None:
        self.sign = sign
        self.unsign = unsign
        self.ttl = ttl

    def logins(self, value: str | None) -> list[Login] | None:
        """The logins in `value`, oldest first; None when it is not ours or all too old."""
        data = self.unsign("state", value, max_age=self.ttl)
        if data is None or not isinstance(data.get("l"), list):
            return None
        return [Login(*item) for item in data["l"]
                if isinstance(item, list) and len(item) == 4
                and all(isinstance(x, str) for x in item[:3]) and isinstance(item[3], int)]

    def value(self, logins: list[Login]) -> str:
        """The cookie value for `logins` (not empty)."""
        # "t" is the newest login's: the whole cookie expires with it, each login on its own.
        return self.sign("state", {"t": max(x.began for x in logins),
                                   "l": [[x.state, x.next, x.scope, x.began] for x in logins]})

    def add(self, value: str | None, login: Login) -> str:
        """`value` with `login` added: expired logins dropped, the newest LOGINS_KEPT kept."""
        live = [x for x in self.logins(value) or [] if 0 <= login.began - x.began <= self.ttl]
        return self.value([*live[-(LOGINS_KEPT - 1):], login])
