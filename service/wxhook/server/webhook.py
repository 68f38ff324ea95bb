"""The /wechat route: guard, unwrap, parse, dedup, dispatch, deadline, render, record.

A raw ASGI endpoint rather than a FastAPI path operation: on the hot route dependency
injection and validation cost more than the whole guard (see the README's profile).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from typing import Any

from wxhook.errors import GuardError
from wxhook.messages import InboundMessage
from wxhook.replies import SUCCESS, NoReply, decode, encode
from wxhook.router import Context, Router
from wxhook.server.config import Settings
from wxhook.server.dedup import Dedup
from wxhook.server.delivery import Answered, LateDelivery
from wxhook.server.guard import Admission, ClientGone, Guard, parse_query
from wxhook.server.loglimit import LimitedLog
from wxhook.server.logs import get_logger, log_info, mask_openid, upstream_trace
from wxhook.server.metrics import DEFAULT_ACCOUNT, Metrics
from wxhook.server.profiles import Profiles
from wxhook.server.signature import LocalNonces
from wxhook.server.store.fifo import FifoMemory
from wxhook.server.wechat_api import WeChatAPI
from wxhook.state import States
from wxhook.store import Store

Scope = dict[str, Any]
_XML = [(b"content-type", b"application/xml; charset=utf-8")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
# The echo is the caller's own text: no browser may sniff it into HTML.
_ECHO = [*_TEXT, (b"x-content-type-options", b"nosniff")]


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
    """One first try: the passive reply once rendered, or late delivery's future once the
    deadline passed. Both change in one step of the loop, so the handler sees one or the
    other."""

    __slots__ = ("late", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.ready: asyncio.Future[bytes] = loop.create_future()
        self.late: asyncio.Future[Answered] | None = None

    def answer(self, reply: bytes) -> None:
        """The passive reply, unless the deadline came first (or the request is gone)."""
        if not self.ready.done():
            self.ready.set_result(reply)


class Webhook:
    """ASGI app for GET (URL verification) and POST (pushes) on /wechat."""

    def __init__(self, settings: Settings, *, store: Store, router: Router, api: WeChatAPI,
                 profiles: Profiles, delivery: LateDelivery, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, account: str = DEFAULT_ACCOUNT,
                 retries: FifoMemory | None = None, nonces: LocalNonces | None = None) -> None:
        self.settings = settings
        self.account = account
        self.store = store
        # Keys in a shared store (Redis) name the appid; without one, nonces and retry
        # replies stay in memories of this process and use no store key.
        namespace = f"wxhook:{settings.app_id}:"
        # `retries` and `nonces`: the process memories every account of an accounts file
        # shares (each bounded for the whole process); a single account makes its own.
        self.guard = Guard(settings, store=store, namespace=namespace, metrics=metrics,
                           clock=wall_clock, nonces=nonces)
        self.dedup = Dedup(store, namespace=namespace, ttl=settings.dedup_ttl, clock=clock,
                           local=retries)
        self.router = router
        self.api = api
        self.profiles = profiles
        self.delivery = delivery
        self.metrics = metrics
        self.log = get_logger("wxhook.push")
        self.refusals = LimitedLog(self.log, metrics=metrics, clock=clock)  # a flood's lines
        self.states = States(store, namespace=namespace, ttl=settings.state_ttl,
                             log=LimitedLog(get_logger("wxhook.state"), metrics=metrics,
                                            clock=clock))
        self._running: set[asyncio.Task[Any]] = set()  # strong refs to first tries' tasks
        # Each label set's child looked up once: labels() takes a lock and builds its key on
        # every call. The label values are bounded (see _MSG_TYPES), so is this cache.
        self._pushes_of = functools.cache(metrics.pushes.labels)
        # Request ids: a random prefix per process and a counter (no syscall per push).
        self._rid = os.urandom(4).hex() + "-"
        self._pushes = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        query = parse_query(scope["query_string"])
        if scope["method"] == "POST":
            status, body, headers = await self._push(scope, receive, query)
        elif scope["method"] in ("GET", "HEAD"):
            try:
                status, body, headers = 200, await self.guard.verify_url(query), _ECHO
                # A verbatim repeat is answered again: its line is bounded like a refusal's.
                self.refusals.info("url_verified", "url_verified", account=self.account)
            except GuardError as exc:
                status, body, headers = self._refuse(exc, {"method": "GET",
                                                           "account": self.account})
        else:
            status, body, headers = 405, b"method not allowed", _TEXT
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # -- POST: a push ----------------------------------------------------------------------

    async def _push(self, scope: Scope, receive: Any,
                    q: dict[str, str]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        started = time.monotonic()
        deadline = started + self.settings.deadline
        self._pushes += 1
        # Every push line has the same keys, so queries over the logs need no special cases.
        rec: dict[str, Any] = {"request_id": f"{self._rid}{self._pushes:x}",
                               "account": self.account, "appid": self.settings.app_id,
                               "handler": None,
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
            stored = await self.dedup.replay(key, deadline) if retried else None
            if stored is not None:
                reply = self._replayed(stored, admitted)
            else:  # the first try, or a retry that took over from a holder that died
                retried = False
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

    async def _first_try(self, key: str, admitted: Admission, deadline: float, started: float,
                         rec: dict[str, Any]) -> bytes:
        # The handler runs in a task of its own, so a dropped connection does not cancel it
        # (the retry gets its reply) and an overrun can be answered while it goes on.
        loop = asyncio.get_running_loop()
        run = _Run(loop)
        self._keep(loop.create_task(self._produce(key, admitted, run, deadline, rec)))
        timer = loop.call_later(deadline - time.monotonic(), self._time_up, key,
                                admitted.message, run, started, rec)
        try:
            # Decided on the reply, not on the task: the task may still be recording it.
            # If this request is cancelled, so is `ready`, and the handler's reply still
            # goes to the dedup record for WeChat's retry.
            reply = await run.ready
        finally:
            timer.cancel()
        return SUCCESS if reply is _LATE else reply

    def _time_up(self, key: str, msg: InboundMessage, run: _Run, started: float,
                 rec: dict[str, Any]) -> None:
        # At the deadline: answer "success" now; the handler goes on and its reply goes out
        # through custom/send. All of it here, in the timer's own step, so a request
        # cancelled at the same moment changes nothing.
        if run.ready.done():
            return
        loop = run.ready.get_loop()
        run.late = loop.create_future()
        run.ready.set_result(_LATE)
        self.delivery.hand_over(run.late, openid=msg.openid, started=started)
        self.metrics.deadline_fallbacks.inc()
        rec.update(outcome="fallback", deadline_fallback=True)
        # What this try answered is what retries get.
        self._keep(loop.create_task(self.dedup.settle(key, SUCCESS)))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a task until it is done (the loop keeps only a weak reference)."""
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _produce(self, key: str, admitted: Admission, run: _Run, deadline: float,
                       rec: dict[str, Any]) -> None:
        msg = admitted.message
        record = SUCCESS
        try:
            ctx = Context(deadline=deadline, profiles=self.profiles, api=self.api,
                          settings=self.settings, log=self.log, states=self.states,
                          openid=msg.openid, account=self.account)
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
            else:
                if ctx.state_read:  # only when a handler read it: no store call else
                    await self._save_state(ctx, rec)
            if isinstance(reply, NoReply):  # answered, with nothing to say
                reply = None
            if run.late is not None:  # the deadline passed: late delivery takes it from here
                if not run.late.done():
                    run.late.set_result((reply, ctx.after_reply))
                return
            rec["handler"] = ctx.handler or None
            if reply is not None:
                # A text WeChat would not show is cut; its rest follows the reply. The record
                # keeps the passive part: a retry gets the same bytes and sends nothing more.
                reply, after = self.delivery.passive(reply, ctx.after_reply, openid=msg.openid)
                rec["reply_type"] = reply.msg_type
                # Sealed, when the push was, under the key that opened it.
                xml, record = encode(reply, to_user=msg.from_user, from_user=msg.to_user,
                                     crypto=admitted.crypto, key=admitted.key)
                run.answer(xml)
                if after:  # only now: reply 1 is rendered and on its way
                    self.delivery.follow_up(after, msg.openid)
        except Exception as exc:
            self.log.error("reply_failed", exc_info=exc, **rec)
            rec["outcome"] = "no_reply"
            record = SUCCESS
        finally:
            # Exactly one settle per claim: here, unless the deadline won (then _time_up
            # settled "success"), so no claim is left pending and no waiter hangs.
            if run.late is None:
                run.answer(record)
                await self.dedup.settle(key, record)

    async def _save_state(self, ctx: Context, rec: dict[str, Any]) -> None:
        # Before the reply goes out: the follower's next message must find it.
        outcome = await ctx.save_state(request_id=rec["request_id"], openid=rec["openid"],
                                       handler=ctx.handler or None)
        if outcome is not None:
            self.metrics.state_writes.labels(outcome).inc()

    def _replayed(self, stored: bytes, admitted: Admission) -> bytes:
        """The first try's reply, byte for byte, from its dedup record."""
        msg = admitted.message
        try:
            return decode(stored, to_user=msg.from_user, from_user=msg.to_user,
                          crypto=admitted.crypto, key=admitted.key)
        except ValueError as exc:  # a record from an incompatible version
            self.log.warning("dedup_record_unreadable", error=str(exc))
            return SUCCESS

    def _count(self, msg_type: str, event: str, outcome: str) -> None:
        labels = (msg_type if msg_type in _MSG_TYPES else "other",
                  event if event in _EVENTS else "other", outcome)
        self._pushes_of(*labels).inc()

    def _refuse(self, exc: GuardError,
                rec: dict[str, Any]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self.metrics.guard_failures.labels(exc.reason).inc()
        if scope_is_push := rec.get("method") != "GET":
            self._count("", "", "rejected")
        self.refusals.warning(exc.reason,
                              "push_refused" if scope_is_push else "url_verification_refused",
                              **rec, status=exc.status, reason=exc.reason, why=str(exc))
        return exc.status, f"{exc.reason}: {exc}".encode(), _TEXT
