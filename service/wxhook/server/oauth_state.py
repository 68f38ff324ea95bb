"""What an OAuth login carries between /oauth/login and the callback: one bounded cookie,
and the signed values (itsdangerous) the login and session cookies hold.

Each login used to set a cookie of its own (~2.9 KB with a long `next`), so a browser that
started three logins sent a Cookie header nginx refused ("Request Header Or Cookie Too
Large") and every callback after that failed. One cookie now holds the newest LOGINS_KEPT
logins of a browser (two tabs signing in at once still both work), each `next` at most
MAX_NEXT_BYTES: the header stays under ~2.5 KB however many logins a browser starts.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

DEFAULT_NEXT = "/me"
COOKIE = "wxhook_oauth"
PATH = "/oauth/"        # /oauth/login reads the logins in progress, the callback too
# With an accounts file each account's cookie is COOKIE_{name} on /oauth/{name}/ only.
LOGINS_KEPT = 3         # newest logins kept; an older one's callback is refused as forged
MAX_NEXT_BYTES = 512    # a `next` as stored (UTF-8, JSON-escaped); longer is refused



class _ClockSigner(TimestampSigner):
    """A TimestampSigner on the caller's wall clock (tests move it to expire a value)."""

    def __init__(self, *args: Any, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return int(self.clock())


def serializer(secret: str, purpose: str, *,
               clock: Callable[[], float]) -> URLSafeTimedSerializer:
    """Signed, timestamped values only holders of `secret` can make, for one `purpose`."""
    # The purpose is the salt: a login cookie can never pass for a session cookie. Its JSON
    # keeps UTF-8 as is (an escaped CJK `next` would take twice the bytes in the cookie).
    return URLSafeTimedSerializer(secret, salt=f"wxhook.oauth.{purpose}", signer=_ClockSigner,
                                  signer_kwargs={"digest_method": hashlib.sha256,
                                                 "clock": clock})


def verified(signed: URLSafeTimedSerializer, value: str | None, *,
             max_age: int) -> dict[str, Any] | None:
    """The data of a valid, unexpired signed value, else None."""
    try:
        data = signed.loads(value or "", max_age=max_age)
    except BadData:  # tampered with, expired, signed in the future, not ours at all
        return None
    return data if isinstance(data, dict) else None


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

    def __init__(self, signed: URLSafeTimedSerializer, *, ttl: int) -> None:
        self.signed = signed
        self.ttl = ttl

    def logins(self, value: str | None) -> list[Login] | None:
        """The logins in `value`, oldest first; None when it is not ours or too old."""
        data = verified(self.signed, value, max_age=self.ttl)
        if data is None or not isinstance(data.get("l"), list):
            return None
        return [Login(*item) for item in data["l"]
                if isinstance(item, list) and len(item) == 4
                and all(isinstance(x, str) for x in item[:3]) and isinstance(item[3], int)]

    def value(self, logins: list[Login]) -> str:
        """The cookie value for `logins` (not empty)."""
        # Signed now, so the cookie lives `ttl` from now; each login expires on its own too.
        value: str = self.signed.dumps({"l": [[x.state, x.next, x.scope, x.began]
                                              for x in logins]})
        return value

    def add(self, value: str | None, login: Login) -> str:
        """`value` with `login` added: expired logins dropped, the newest LOGINS_KEPT kept."""
        live = [x for x in self.logins(value) or [] if 0 <= login.began - x.began <= self.ttl]
        return self.value([*live[-(LOGINS_KEPT - 1):], login])
