"""The /wechat route: guard, unwrap, parse, dedup, dispatch, deadline, render, record.

A raw ASGI endpoint rather than a FastAPI path operation: on the hot route dependency
injection and validation cost more than the whole guard (see the README's profile).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import orjson

from handlers.router import Context, Router

from .config import Settings
from .crypto import MessageCrypto
from .dedup import Dedup
from .delivery import LateDelivery
from .errors import BodyTooLarge, FreshnessError, GuardError, SignatureError, XMLError
from .messages import InboundMessage, build_message, parse_fields, safe_mode_encrypt
from .observability import Metrics, get_logger, mask_openid, upstream_trace
from .profiles import Profiles
from .replies import SUCCESS, Reply, envelope, tail
from .signature import LocalNonces, SharedNonces, check_fresh, verify
from .store.base import Store
from .waiting import wait_done
from .wechat_api import WeChatAPI

Scope = dict[str, Any]
_XML = [(b"content-type", b"application/xml; charset=utf-8")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
T = TypeVar("T")
R = TypeVar("R")


# Label values come from pushes: unknown types map to "other" so a new MsgType (or a
# caller with our token) cannot grow the number of time series without bound.
_MSG_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link",
                        "event", ""})
_EVENTS = frozenset({"", "subscribe", "unsubscribe", "scan", "location", "click", "view",
                     "view_miniprogram", "scancode_push", "scancode_waitmsg", "pic_sysphoto",
                     "pic_photo_or_album", "pic_weixin", "location_select",
                     "templatesendjobfinish", "masssendjobfinish"})


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


def _safely(fn: Callable[[T], R], arg: T) -> R:
    """Input that trips an unexpected error in parsing is still a bad request, never a 5xx."""
    try:
        return fn(arg)
    except GuardError:
        raise
    except Exception as exc:
        raise XMLError(f"unreadable push ({type(exc).__name__})") from exc


class _Run:
    """One first try: its deadline, the reply once ready, and late delivery's future."""

    __slots__ = ("deadline", "late", "ready")

    def __init__(self, deadline: float, ready: asyncio.Future[bytes]) -> None:
        self.deadline = deadline
        self.ready = ready   # the passive reply, set as soon as it is rendered
        self.late: asyncio.Future[Reply | None] | None = None  # set when the deadline won


class ClientGone(Exception):
    """The connection closed while the body was being read."""


class Webhook:
    """ASGI app for GET (URL verification) and POST (pushes) on /wechat."""

    def __init__(self, settings: Settings, *, store: Store, router: Router, api: WeChatAPI,
                 profiles: Profiles, delivery: LateDelivery, metrics: Metrics) -> None:
        self.settings = settings
        self.token = settings.token.get_secret_value()
        self.crypto = (MessageCrypto(self.token, settings.aes_keys, settings.app_id)
                       if settings.aes_keys else None)
        self.store = store
        # Keys name the appid where they are shared (Redis); a process's own store serves one
        # account, and ~25 bytes a key add up to megabytes in a busy minute.
        self.namespace = f"wxhook:{settings.app_id}:" if store.shared else ""
        self.dedup = Dedup(store, namespace=self.namespace, ttl=settings.dedup_ttl)
        window = settings.timestamp_window
        self.nonces: LocalNonces | SharedNonces = (
            SharedNonces(store, namespace=self.namespace, window=window) if store.shared
            else LocalNonces(window=window))
        self.router = router
        self.api = api
        self.profiles = profiles
        self.delivery = delivery
        self.metrics = metrics
        self.log = get_logger("wxhook.push")
        self._running: set[asyncio.Task[None]] = set()  # strong refs to first tries' tasks
        self._counters: dict[tuple[str, str, str], Any] = {}
        # Request ids: a random prefix per process and a counter (no syscall per push).
        self._rid = os.urandom(4).hex() + "-"
        self._pushes = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        query = parse_query(scope["query_string"])
        if scope["method"] == "POST":
            status, body, headers = await self._push(scope, receive, query)
        elif scope["method"] in ("GET", "HEAD"):
            status, body, headers = self._verify_url(query)
        else:
            status, body, headers = 405, b"method not allowed", _TEXT
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # -- GET: URL verification -----------------------------------------------------------

    def _verify_url(self, q: dict[str, str]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            sig, ts, nonce, echostr = (q.get(k, "") for k in
                                       ("signature", "timestamp", "nonce", "echostr"))
            if not (sig and ts and nonce and echostr):
                raise GuardError("URL verification needs signature, timestamp, nonce, echostr")
            verify((self.token, ts, nonce), sig)
            check_fresh(ts, window=self.settings.timestamp_window)
        except GuardError as exc:
            return self._refuse(exc, {"method": "GET"})
        self.log.info("url_verified")
        return 200, echostr.encode(), _TEXT

    # -- POST: a push ----------------------------------------------------------------------

    async def _push(self, scope: Scope, receive: Any,
                    q: dict[str, str]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        started = time.monotonic()
        deadline = started + self.settings.deadline
        self._pushes += 1
        # Every push line has the same keys, so queries over the logs need no special cases.
        rec: dict[str, Any] = {"request_id": f"{self._rid}{self._pushes:x}",
                               "appid": self.settings.app_id, "handler": None,
                               "reply_type": None, "deadline_fallback": False}
        try:
            msg, mode = await self._unwrap(scope, receive, q, deadline)
        except GuardError as exc:
            return self._refuse(exc, rec)
        except ClientGone:
            return 400, b"", _TEXT
        rec.update(mode=mode, msg_type=msg.msg_type, wx_event=msg.event,
                   openid=mask_openid(msg.openid))
        trace: list[tuple[str, int | None]] = []
        token = upstream_trace.set(trace)
        try:
            key = msg.dedup_key()
            retried = not await self.dedup.claim(key)
            if retried:
                reply = self._replayed(await self.dedup.replay(key, deadline), msg)
            else:
                reply = await self._first_try(key, msg, mode, deadline, started, rec)
        except Exception:
            # A bug must not become a 5xx: WeChat would show the follower an error page.
            self.log.exception("push_failed", **rec)
            reply, retried = SUCCESS, False
            rec["outcome"] = "no_reply"
        finally:
            upstream_trace.reset(token)
        if retried:
            self.metrics.dedup_hits.inc()
            rec["outcome"] = "deduped"
        outcome = rec.setdefault("outcome", "replied" if reply != SUCCESS else "no_reply")
        elapsed = time.monotonic() - started
        self._count(msg.msg_type, msg.event, outcome)
        self.metrics.push_latency.observe(elapsed)
        self.log.info("push", **rec, dedup_hit=retried, latency_ms=round(elapsed * 1000, 2),
                      upstream=[f"{api}:{code}" for api, code in trace])
        return 200, reply, (_TEXT if reply == SUCCESS else _XML)

    async def _unwrap(self, scope: Scope, receive: Any, q: dict[str, str],
                      deadline: float) -> tuple[InboundMessage, str]:
        sig, ts, nonce = q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")
        if not (sig and ts and nonce):
            raise GuardError("missing signature, timestamp or nonce")
        verify((self.token, ts, nonce), sig)
        check_fresh(ts, window=self.settings.timestamp_window)
        body = await self._read_body(scope, receive, deadline)
        mode = "plain"
        if q.get("encrypt_type", "").lower() == "aes":
            if self.crypto is None:
                raise GuardError("encrypted push but WECHAT_ENCODING_AES_KEY is not set")
            encrypt = safe_mode_encrypt(body)  # the common envelope, without a parse
            if encrypt is not None:
                mode = "safe"
            else:
                outer = _safely(parse_fields, body)
                encrypt = outer.get("Encrypt", "")
                if not encrypt:
                    raise GuardError("encrypt_type=aes but the body has no Encrypt")
                mode = "compat" if "MsgType" in outer else "safe"
            msg_sig = q.get("msg_signature", "")
            if not msg_sig:
                raise SignatureError("missing msg_signature", reason="msg_signature")
            self.crypto.check_signature(ts, nonce, encrypt, msg_sig)
            fields = _safely(parse_fields, _safely(self.crypto.decrypt, encrypt))
        elif "MsgType" not in (fields := _safely(parse_fields, body)) and "Encrypt" in fields:
            raise GuardError("a safe-mode body needs encrypt_type=aes and msg_signature")
        msg = _safely(build_message, fields)
        # Remembered only once the push is valid: a broken body must not burn the nonce.
        if mode == "plain":  # msg_signature covers an encrypted body: a replay cannot alter it
            await self._remember_nonce(ts, nonce, body)
        return msg, mode

    async def _read_body(self, scope: Scope, receive: Any, deadline: float) -> bytes:
        limit = self.settings.max_body
        for name, value in scope["headers"]:
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
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
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

    async def _remember_nonce(self, ts: str, nonce: str, body: bytes) -> None:
        # The same signed query with the same body is WeChat retrying (dedup answers it);
        # with another body it is someone replaying a captured signature.
        # 8 bytes suffice: forging a second body with the same digest is a 2^64 search.
        digest = hashlib.blake2b(body, digest_size=8).digest()
        try:
            first = await self.nonces.first_seen(int(ts), nonce, digest)
        except Exception as exc:  # noqa: BLE001 - the store failing must not cost the reply
            self.metrics.store_fallbacks.inc()
            self.log.warning("nonce_memory_unavailable", error=type(exc).__name__)
            return
        if not first:
            raise FreshnessError("nonce replayed with a different body", reason="replay")

    async def _first_try(self, key: str, msg: InboundMessage, mode: str, deadline: float,
                         started: float, rec: dict[str, Any]) -> bytes:
        # The handler runs in a task of its own, so a dropped connection does not cancel it
        # (the retry gets its reply) and an overrun can be answered while it goes on.
        loop = asyncio.get_running_loop()
        run = _Run(deadline, loop.create_future())
        task = loop.create_task(self._produce(key, msg, mode, run, rec))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # Decided on the reply, not on the task: the task may still be recording it.
        if await wait_done(run.ready, deadline - time.monotonic()):
            return run.ready.result()
        # Answer in time; the handler goes on and its reply goes out through custom/send.
        run.late = loop.create_future()
        self.delivery.hand_over(run.late, openid=msg.openid, started=started)
        self.metrics.deadline_fallbacks.inc()
        rec.update(outcome="fallback", deadline_fallback=True)
        await self.dedup.settle(key, SUCCESS)  # what this try answered is what retries get
        return SUCCESS

    async def _produce(self, key: str, msg: InboundMessage, mode: str, run: _Run,
                       rec: dict[str, Any]) -> None:
        record = SUCCESS
        try:
            ctx = Context(deadline=run.deadline, profiles=self.profiles, api=self.api,
                          settings=self.settings, log=self.log)
            try:
                reply = await self.router.dispatch(msg, ctx)
            except Exception as exc:
                if run.late is not None:
                    if not run.late.done():
                        run.late.set_exception(exc)
                    return
                self.log.error("handler_failed", exc_info=exc, **rec)
                rec["outcome"] = "no_reply"
                reply = None
            if run.late is not None:  # the deadline passed: late delivery takes it from here
                if not run.late.done():
                    run.late.set_result(reply)
                return
            rec["handler"] = ctx.handler or None
            if reply is None:
                run.ready.set_result(SUCCESS)
                return
            rec["reply_type"] = reply.msg_type
            # Retries get these bytes again, rebuilt from a small record rather than kept
            # whole: the retry carries the same push, the rest is deterministic (AES-CBC
            # here has a fixed IV), and a busy minute holds hundreds of thousands of replies.
            fields: list[Any] = [int(time.time()), tail(reply)]
            prefix = b""
            if mode != "plain" and self.crypto is not None:
                prefix = secrets.token_bytes(16)
                fields += [str(int(time.time())), str(secrets.randbits(32)), prefix.hex()]
            xml = self._rebuild(fields, msg, prefix)
            record = orjson.dumps(fields)
            run.ready.set_result(xml)
        except Exception as exc:
            self.log.error("reply_failed", exc_info=exc, **rec)
            rec["outcome"] = "no_reply"
            record = SUCCESS
        finally:
            # Exactly one settle per claim: here, unless the deadline won (then the request
            # settled "success" itself), so no claim is left pending and no waiter hangs.
            if run.late is None:
                if not run.ready.done():
                    run.ready.set_result(SUCCESS)
                await self.dedup.settle(key, record)

    def _rebuild(self, record: list[Any], msg: InboundMessage, prefix: bytes = b"") -> bytes:
        create_time, body, *sealed = record
        xml: bytes = (envelope(to_user=msg.from_user, from_user=msg.to_user,
                               create_time=int(create_time)) + str(body)).encode()
        if sealed and self.crypto is not None:
            timestamp, nonce, prefix_hex = sealed
            xml = self.crypto.wrap_reply(xml, timestamp=timestamp, nonce=nonce,
                                         random_prefix=prefix or bytes.fromhex(prefix_hex))
        return xml

    def _replayed(self, stored: bytes, msg: InboundMessage) -> bytes:
        """The first try's reply, rebuilt from its dedup record."""
        if stored == SUCCESS:
            return SUCCESS
        try:
            return self._rebuild(orjson.loads(stored), msg)
        except (ValueError, TypeError) as exc:  # a record from an incompatible version
            self.log.warning("dedup_record_unreadable", error=repr(exc))
            return SUCCESS

    def _count(self, msg_type: str, event: str, outcome: str) -> None:
        labels = (msg_type if msg_type in _MSG_TYPES else "other",
                  event if event in _EVENTS else "other", outcome)
        child = self._counters.get(labels)
        if child is None:
            child = self._counters[labels] = self.metrics.pushes.labels(*labels)
        child.inc()

    def _refuse(self, exc: GuardError,
                rec: dict[str, Any]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self.metrics.guard_failures.labels(exc.reason).inc()
        if scope_is_push := rec.get("method") != "GET":
            self._count("", "", "rejected")
        self.log.warning("push_refused" if scope_is_push else "url_verification_refused",
                         **rec, status=exc.status, reason=exc.reason, why=str(exc))
        return exc.status, f"{exc.reason}: {exc}".encode(), _TEXT
