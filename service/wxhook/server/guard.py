"""Steps 1-3 of a push: signature, freshness, body limit, unwrap, parse, nonce memory.

Everything here runs before a handler may see a push, and every refusal is a GuardError
that the route answers with a 4xx: a malformed or hostile push never becomes a 5xx.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote_plus

from wxhook.errors import BodyTooLarge, FreshnessError, GuardError, SignatureError, XMLError
from wxhook.messages import InboundMessage, build_message
from wxhook.server.config import Settings
from wxhook.server.crypto import MessageCrypto
from wxhook.server.loglimit import LimitedLog
from wxhook.server.logs import get_logger
from wxhook.server.metrics import Metrics
from wxhook.server.signature import LocalNonces, SharedNonces, check_signed
from wxhook.server.waiting import within
from wxhook.server.xmldoc import parse_fields, safe_mode_encrypt
from wxhook.store import Store

T = TypeVar("T")
R = TypeVar("R")

# What a signed query was used for. The nonce memory keeps each (timestamp, nonce) with a
# digest of what came with it, keyed by this: WeChat's retry repeats the shape and the body
# and is let through, while the same query in another shape (an encrypted push with its
# encryption stripped, a verification sent as a push, a push's query as a verification)
# digests differently and is refused as a replay. One query is one push.
_PLAIN = b""                # a plaintext push's body (unkeyed, as records before this had it)
_SEALED = b"wxhook-aes"     # an encrypted push's body
_VERIFY = b"wxhook-verify"  # a URL verification's echostr
_REFUSED = b"wxhook-mode"   # a push refused for its mode: no other shape may use its query


def parse_query(raw: bytes) -> dict[str, str]:
    """The query string as a dict; WeChat's values are plain, so decoding is rarely needed."""
    out: dict[str, str] = {}
    for part in raw.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted push: the message, the shape it came in, and how to reply to it."""

    message: InboundMessage
    mode: str  # plain, compat or safe: the shape of this push
    crypto: MessageCrypto | None = None  # None: reply in plaintext
    key: int = 0  # which of the EncodingAESKeys opened the push, and seals the reply

    @property
    def dedup_key(self) -> str:
        """The message's key, whatever its encoding: one message runs its handler once,
        sealed or not (replies.decode answers a try in the other encoding)."""
        return self.message.dedup_key()


class ClientGone(Exception):
    """The connection closed while the body was being read."""


async def read_body(headers: Any, receive: Any, limit: int, deadline: float) -> bytes:
    """The request body (ASGI `receive`), at most `limit` bytes, by `deadline` (monotonic):
    BodyTooLarge (413) past the limit, said by Content-Length or found while reading (never
    read further), GuardError 408 for a sender that stalls, ClientGone when it leaves."""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise GuardError("bad Content-Length")
            if len(value) > 18 or int(value) > limit:
                raise BodyTooLarge(f"body of {value.decode()} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            # A sender that stalls mid-body must not hold the request open forever.
            message = await within(receive(), deadline - time.monotonic())
        except TimeoutError:
            raise GuardError("the body did not arrive before the deadline", status=408,
                             reason="slow_body") from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked bodies carry no length: stop reading at the limit
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Guard:
    """Admits a push (or a URL verification) or raises GuardError saying why not.

    Everything that can be checked without parsing comes first: the query's shapes, the
    signature, the timestamp, the body size, then the nonce memory (timestamp, nonce, and
    the digest of the body in its shape, in every mode). So the parser only ever sees the
    first body signed for a query, and a query serves one push (or one verification).
    """

    def __init__(self, settings: Settings, *, store: Store, namespace: str,
                 metrics: Metrics, clock: Callable[[], float] = time.time,
                 build: Callable[[dict[str, str]], InboundMessage] = build_message,
                 nonces: LocalNonces | None = None) -> None:
        self.settings = settings
        self.build = build  # the fields' typing (tests inject a failing one)
        self.mode = settings.mode
        self.token = settings.token.get_secret_value()
        self.crypto = (MessageCrypto(self.token, settings.aes_keys, settings.app_id)
                       if settings.aes_keys and self.mode != "plain" else None)
        self.clock = clock
        window = settings.timestamp_window
        self.nonces: LocalNonces | SharedNonces = (
            SharedNonces(store, namespace=namespace, window=window, clock=clock)
            if store.shared else nonces if nonces is not None
            else LocalNonces(window=window, clock=clock))
        # The accounts of an accounts file share one process memory (`nonces`): there a
        # nonce is filed under its account's namespace, so one account's never stops another's.
        self.nonce_scope = namespace if nonces is not None and not store.shared else ""
        # A verbatim repeat is WeChat retrying only while the dedup record can answer it;
        # later it would run the handler again, so it is refused as a replay.
        self.retry_span = settings.dedup_ttl
        self.metrics = metrics
        self.log = get_logger("wxhook.guard")
        self.quiet = LimitedLog(self.log, metrics=metrics)  # lines a replayed query can cause

    async def verify_url(self, q: dict[str, str]) -> bytes:
        """The echostr to answer a signed URL verification with, or GuardError."""
        sig, ts, nonce, echostr = (q.get(k, "") for k in
                                   ("signature", "timestamp", "nonce", "echostr"))
        if not (sig and ts and nonce and echostr):
            raise GuardError("URL verification needs signature, timestamp, nonce, echostr")
        stamp = self._signed(sig, ts, nonce)
        echo = echostr.encode()
        # Remembered as pushes are, so its query never becomes a push. A verbatim repeat
        # runs nothing and echoes what it was sent: answered as long as it is fresh.
        await self._remember_nonce(stamp, nonce, echo, _VERIFY, repeats=True)
        return echo

    async def admit(self, scope: dict[str, Any], receive: Any, q: dict[str, str],
                    deadline: float) -> Admission:
        """The admitted push, or GuardError/ClientGone."""
        sig, ts, nonce = q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")
        if not (sig and ts and nonce):
            raise GuardError("missing signature, timestamp or nonce")
        stamp = self._signed(sig, ts, nonce)
        encrypted = q.get("encrypt_type", "").lower() == "aes"
        if encrypted and self.crypto is None:
            await self._used_up(stamp, nonce, GuardError(
                "encrypted push, but this account is in plain mode "
                "(WXHOOK_MESSAGE_MODE, WECHAT_ENCODING_AES_KEY)", reason="mode"))
        if not encrypted and self.mode == "safe":
            await self._used_up(stamp, nonce, GuardError(
                "plaintext push, but this account is in safe mode (WXHOOK_MESSAGE_MODE=safe)",
                status=403, reason="mode"))
        body = await self._read_body(scope, receive, deadline)
        await self._remember_nonce(stamp, nonce, body, _SEALED if encrypted else _PLAIN)
        if self.crypto is None or not encrypted:
            fields = self._parse(body)
            if "Encrypt" in fields:
                # No console mode sends Encrypt without encrypt_type=aes (plain sends plaintext
                # bodies; compat and safe add the flag, which a plain-configured account
                # refuses): such a body is an encrypted push with its encryption stripped.
                raise GuardError("the body carries Encrypt: it is answered only as an "
                                 "encrypted push (encrypt_type=aes, msg_signature)",
                                 reason="mode")
            return Admission(self._safely(self.build, fields), "plain")
        mode = "safe"
        encrypt = safe_mode_encrypt(body)  # the common envelope, without a parse
        if encrypt is None:
            outer = self._parse(body)
            encrypt = outer.get("Encrypt", "")
            if not encrypt:
                raise GuardError("encrypt_type=aes but the body has no Encrypt")
            mode = "compat" if "MsgType" in outer else "safe"
        msg_sig = q.get("msg_signature", "")
        if not msg_sig:
            raise SignatureError("missing msg_signature", reason="msg_signature")
        self.crypto.check_signature(ts, nonce, encrypt, msg_sig)
        inner, key = self._safely(self.crypto.decrypt_with_key, encrypt)
        msg = self._safely(self.build, self._parse(inner))
        return Admission(msg, mode, self.crypto, key)

    def _signed(self, sig: str, ts: str, nonce: str) -> int:
        return check_signed(self.token, sig, ts, nonce, window=self.settings.timestamp_window,
                            now=self.clock())

    async def _used_up(self, ts: int, nonce: str, refusal: GuardError) -> NoReturn:
        # A push refused for its mode still uses up its query: stripped or unwrapped into
        # the shape this account takes, it is refused as a replay, never run.
        await self._remember_nonce(ts, nonce, b"", _REFUSED, repeats=True)
        raise refusal

    def _parse(self, body: bytes) -> dict[str, str]:
        try:
            return self._safely(parse_fields, body)
        except XMLError as exc:
            if exc.__cause__ is not None:  # the parser's own words: for the log, never the client
                self.quiet.info("xml", "xml_refused", detail=str(exc.__cause__)[:300])
            raise

    @staticmethod
    def _safely(fn: Callable[[T], R], arg: T) -> R:
        """Input that trips an unexpected error in parsing is still a bad request, never a 5xx."""
        try:
            return fn(arg)
        except GuardError:
            raise
        except Exception as exc:
            raise XMLError(f"unreadable push ({type(exc).__name__})") from exc

    async def _read_body(self, scope: dict[str, Any], receive: Any,
                         deadline: float) -> bytes:
        return await read_body(scope["headers"], receive, self.settings.max_body, deadline)

    async def _remember_nonce(self, ts: int, nonce: str, data: bytes, shape: bytes, *,
                              repeats: bool = False) -> None:
        # The same signed query with the same body is WeChat retrying (dedup answers it);
        # with another body, or in another shape, it is someone replaying a captured
        # signature. Remembered before parsing: a captured query gives no second body a way
        # into the parser. 8 bytes suffice: forging a second body with the same digest is a
        # 2^64 search.
        digest = hashlib.blake2b(data, digest_size=8, person=shape).digest()
        try:
            first = await self.nonces.first_seen(ts, self.nonce_scope + nonce, digest)
        except Exception as exc:  # noqa: BLE001 - the store failing must not cost the reply
            self.metrics.store_fallbacks.inc()
            self.quiet.warning("nonce_memory", "nonce_memory_unavailable",
                               error=type(exc).__name__)
            return
        if first is None:
            raise FreshnessError("nonce replayed with a different body or shape",
                                 reason="replay")
        if not repeats and self.clock() - first >= self.retry_span:
            raise FreshnessError(f"the same push again after {self.retry_span} s or more: "
                                 "its reply is forgotten, so it is not run twice",
                                 reason="replay")
