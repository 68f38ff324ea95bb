"""The /wechat route: guard, unwrap, parse, dedup, dispatch, deadline, render, record.

A raw ASGI endpoint rather than a FastAPI path operation: on the hot route dependency
injection and validation cost more than the whole guard (see the README's profile).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from handlers.router import Context, Router

from .config import Settings
from .dedup import Dedup
from .delivery import LateDelivery
from .errors import GuardError
from .guard import Admission, ClientGone, Guard, parse_query
from .logs import get_logger, log_info, mask_openid, upstream_trace
from .messages import InboundMessage
from .metrics import Metrics
from .profiles import Profiles
from .replies import SUCCESS, Reply, TextReply, envelope, tail
from .store.base import Store
from .waiting import Deadlines
from .wechat_api import WeChatAPI

Scope = dict[str, Any]
_XML = [(b"content-type", b"application/xml; charset=utf-8")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


# Label values come from pushes: unknown types map to "other" so a new MsgType (or a
# caller with our token) cannot grow the number of time series without bound.
_MSG_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link",
                        "event", ""})
_EVENTS = frozenset({"", "subscribe", "unsubscribe", "scan", "location", "click", "view",
                     "view_miniprogram", "scancode_push", "scancode_waitmsg", "pic_sysphoto",
                     "pic_photo_or_album", "pic_weixin", "location_select",
                     "templatesendjobfinish", "masssendjobfinish"})


_LATE = b"\x00late"  # what `ready` holds when the deadline came first (never a reply)


class _Run:
    """One first try: its deadline, the reply once ready, and late delivery's future."""

    __slots__ = ("deadline", "late", "ready")

    def __init__(self, deadline: float, ready: asyncio.Future[bytes]) -> None:
        self.deadline = deadline
        self.ready = ready   # the passive reply, set as soon as it is rendered
        self.late: asyncio.Future[Reply | None] | None = None  # set when the deadline won

    def answer(self, reply: bytes) -> None:
        """The passive reply, unless the deadline came first (or the request is gone)."""
        if not self.ready.done():
            self.ready.set_result(reply)

    def time_up(self) -> None:
        """At the deadline: from now on the handler's reply goes to late delivery. Both
        futures change in one step of the loop, so the handler sees one or the other."""
        if not self.ready.done():
            self.late = self.ready.get_loop().create_future()
            self.ready.set_result(_LATE)


class Webhook:
    """ASGI app for GET (URL verification) and POST (pushes) on /wechat."""

    def __init__(self, settings: Settings, *, store: Store, router: Router, api: WeChatAPI,
                 profiles: Profiles, delivery: LateDelivery, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        # Keys in a shared store (Redis) name the appid; without one, nonces and retry
        # replies stay in memories of this process and use no store key.
        namespace = f"wxhook:{settings.app_id}:"
        self.guard = Guard(settings, store=store, namespace=namespace, metrics=metrics)
        self.crypto = self.guard.crypto
        self.dedup = Dedup(store, namespace=namespace, ttl=settings.dedup_ttl)
        self.router = router
        self.api = api
        self.profiles = profiles
        self.delivery = delivery
        self.metrics = metrics
        self.log = get_logger("wxhook.push")
        self._running: set[asyncio.Task[Any]] = set()  # strong refs to first tries' tasks
        self._deadlines = Deadlines()  # first tries still running, in deadline order
        self._counters: dict[tuple[str, str, str], Any] = {}
        # Request ids: a random prefix per process and a counter (no syscall per push).
        self._rid = os.urandom(4).hex() + "-"
        self._pushes = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        query = parse_query(scope["query_string"])
        if scope["method"] == "POST":
            status, body, headers = await self._push(scope, receive, query)
        elif scope["method"] in ("GET", "HEAD"):
            try:
                status, body, headers = 200, self.guard.verify_url(query), _TEXT
                self.log.info("url_verified")
            except GuardError as exc:
                status, body, headers = self._refuse(exc, {"method": "GET"})
        else:
            status, body, headers = 405, b"method not allowed", _TEXT
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # -- GET: URL verification -----------------------------------------------------------

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
            admitted = await self.guard.admit(scope, receive, q, deadline)
        except GuardError as exc:
            return self._refuse(exc, rec)
        except ClientGone:
            return 400, b"", _TEXT
        msg = admitted.message
        rec.update(mode=admitted.mode, msg_type=msg.msg_type, wx_event=msg.event,
                   openid=mask_openid(msg.openid))
        trace: list[tuple[str, int | None]] = []
        token = upstream_trace.set(trace)
        try:
            key = admitted.dedup_key
            retried = not await self.dedup.claim(key)
            if retried:
                reply = self._replayed(await self.dedup.replay(key, deadline), admitted)
            else:
                reply = await self._first_try(key, admitted, deadline, started, rec)
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
        # A copy: a handler that overruns still logs with `rec` after this line is written.
        log_info(self.log, "push", {**rec, "dedup_hit": retried,
                                    "latency_ms": round(elapsed * 1000, 2),
                                    "upstream": [f"{api}:{code}" for api, code in trace]})
        return 200, reply, (_TEXT if reply == SUCCESS else _XML)

    async def _first_try(self, key: str, admitted: Admission, deadline: float,
                         started: float, rec: dict[str, Any]) -> bytes:
        # The handler runs in a task of its own, so a dropped connection does not cancel it
        # (the retry gets its reply) and an overrun can be answered while it goes on.
        loop = asyncio.get_running_loop()
        run = _Run(deadline, loop.create_future())
        msg = admitted.message
        self._keep(loop.create_task(self._produce(key, admitted, run, rec)))
        # Decided on the reply, not on the task: the task may still be recording it.
        # Awaited as is: if this request is cancelled, so is `ready`, and the handler's
        # reply still goes to the dedup record for WeChat's retry.
        self._deadlines.add(run, deadline, run.time_up)
        try:
            reply = await run.ready
        except asyncio.CancelledError:
            if run.late is not None:  # the deadline came in the step this request was cancelled
                # (the handler left the late reply and the claim to it)
                self._keep(loop.create_task(self._overrun(key, msg, run, started, rec)))
            raise
        finally:
            self._deadlines.discard(run)
        if reply is not _LATE:
            return reply
        return await self._overrun(key, msg, run, started, rec)

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a task until it is done (the loop keeps only a weak reference)."""
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _overrun(self, key: str, msg: InboundMessage, run: _Run, started: float,
                       rec: dict[str, Any]) -> bytes:
        # Answer in time; the handler goes on and its reply goes out through custom/send.
        assert run.late is not None
        self.delivery.hand_over(run.late, openid=msg.openid, started=started)
        self.metrics.deadline_fallbacks.inc()
        rec.update(outcome="fallback", deadline_fallback=True)
        await self.dedup.settle(key, SUCCESS)  # what this try answered is what retries get
        return SUCCESS

    async def _produce(self, key: str, admitted: Admission, run: _Run,
                       rec: dict[str, Any]) -> None:
        msg = admitted.message
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
                run.answer(SUCCESS)
                return
            rec["reply_type"] = reply.msg_type
            # Retries get these bytes again, rebuilt from a small record rather than kept
            # whole: the retry carries the same push, the rest is deterministic (AES-CBC
            # here has a fixed IV), and a busy minute holds hundreds of thousands of replies.
            # A text reply, nearly every reply, is kept as [its text] without its XML, and
            # first: an instance of the version before reads [time, tail] and rejects this
            # shape (a retry it serves during a rolling deploy gets "success", not garbage).
            now = int(time.time())
            fields: list[Any] = ([[reply.content], now] if type(reply) is TextReply
                                 else [now, tail(reply)])
            prefix = b""
            if admitted.crypto is not None:
                seed = os.urandom(20)  # one system call for the AES prefix and the nonce
                prefix = seed[:16]
                fields += [str(now), str(int.from_bytes(seed[16:], "big")), prefix.hex()]
            xml = self._rebuild(fields, admitted, prefix)
            record = orjson.dumps(fields)
            run.answer(xml)
        except Exception as exc:
            self.log.error("reply_failed", exc_info=exc, **rec)
            rec["outcome"] = "no_reply"
            record = SUCCESS
        finally:
            # Exactly one settle per claim: here, unless the deadline won (then the request
            # settled "success" itself), so no claim is left pending and no waiter hangs.
            if run.late is None:
                run.answer(SUCCESS)
                await self.dedup.settle(key, record)

    def _rebuild(self, record: list[Any], admitted: Admission, prefix: bytes = b"") -> bytes:
        msg = admitted.message
        create_time, body, *sealed = record
        if isinstance(create_time, list):  # a text reply kept as its text
            create_time, body = body, tail(TextReply(str(create_time[0])))
        xml: bytes = (envelope(to_user=msg.from_user, from_user=msg.to_user,
                               create_time=int(create_time)) + str(body)).encode()
        if sealed and admitted.crypto is not None:  # under the key that opened the push
            timestamp, nonce, prefix_hex = sealed
            xml = admitted.crypto.wrap_reply(xml, timestamp=timestamp, nonce=nonce,
                                             random_prefix=prefix or bytes.fromhex(prefix_hex),
                                             key=admitted.key)
        return xml

    def _replayed(self, stored: bytes, admitted: Admission) -> bytes:
        """The first try's reply, rebuilt from its dedup record."""
        if stored == SUCCESS:
            return SUCCESS
        try:
            return self._rebuild(orjson.loads(stored), admitted)
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
