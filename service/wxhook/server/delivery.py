"""Deadline fallback: a reply that misses the window goes out through custom/send (step 6).

Policy: a push whose handler overruns the budget is answered "success" in time, the handler
keeps running, and its reply is delivered once through message/custom/send. WeChat itself
may refuse it (45015: the follower's window has passed, 45047: too many): then it is
logged and counted, not retried.

A text reply longer than WeChat shows (service/longtext.py) is cut: the head is the passive
reply, the rest follows by customer-service message in parts WeChat takes, in order. An
account that has no customer-service messages (48001: unverified accounts) is remembered as
such for a while; meanwhile a long reply is cut with "…" and logged instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from wxhook.errors import WeChatAPIError
from wxhook.longtext import CUSTOM_BYTES, PASSIVE_BYTES, cut, shortened, size, split
from wxhook.replies import Reply, TextReply, xml_safe
from wxhook.server.logs import get_logger, mask_openid
from wxhook.server.metrics import Metrics
from wxhook.server.wechat_api import NotSent, WeChatAPI

_REFUSED = frozenset({45015, 45047, 48001})
LATE_LIMIT = 55.0  # an event opens a 1-minute window for customer-service messages
# A send that provably did not reach WeChat (refused connection, HTTP 5xx, -1) is repeated;
# one that may have arrived (a timeout after sending) is not: two replies are as bad as none.
_SEND_TRIES = 3
_SEND_BACKOFF = 0.5
FOLLOW_UP_DELAY = 0.3  # seconds between the passive reply and a rule's further replies
UNAUTHORIZED = 48001  # this account may not send customer-service messages at all
# How long a 48001 is believed: an account verified meanwhile gets its follow-ups back.
NO_CUSTOM_MEMORY = 3600.0


Answered = tuple[Reply | None, Sequence[Reply]]  # a handler's reply, and what follows it


class LateDelivery:
    """Tracks handler runs that overran and delivers their replies when they finish."""

    def __init__(self, api: WeChatAPI, *, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self.log = get_logger("wxhook.delivery")
        self._tasks: set[asyncio.Task[None]] = set()
        self._who: dict[asyncio.Task[None], str] = {}
        self._no_custom_until = float("-inf")

    def passive(self, reply: Reply, after: Sequence[Reply], *,
                openid: str) -> tuple[Reply, tuple[Reply, ...]]:
        """`reply` as WeChat shows a passive reply, and what follows it by customer-service
        message: a text over the limit is cut, its rest goes first among the follow-ups."""
        if not isinstance(reply, TextReply):
            return reply, tuple(after)
        text = xml_safe(reply.content)  # what is rendered, so what WeChat counts
        if size(text) <= PASSIVE_BYTES:
            return reply, tuple(after)
        if self.clock() < self._no_custom_until:
            head = shortened(text, PASSIVE_BYTES)
            self.log.warning("long_reply_cut", openid=mask_openid(openid), bytes=size(text),
                             kept=size(head), why="this account cannot send customer-service "
                             f"messages (errcode {UNAUTHORIZED})")
            return TextReply(head), tuple(after)
        head, rest = cut(text, PASSIVE_BYTES)
        self.log.info("long_reply_split", openid=mask_openid(openid), bytes=size(text),
                      passive=size(head))
        return TextReply(head), (TextReply(rest), *after)

    def _refused(self, exc: WeChatAPIError) -> None:
        if exc.errcode == UNAUTHORIZED:
            self._no_custom_until = self.clock() + NO_CUSTOM_MEMORY

    @property
    def pending(self) -> int:
        """Deliveries not finished yet (graceful shutdown waits for them)."""
        return len(self._tasks)

    def hand_over(self, run: asyncio.Future[Answered], *, openid: str,
                  started: float) -> None:
        """Deliver `run`'s reply through custom/send once it finishes."""
        task = asyncio.get_running_loop().create_task(self._deliver(run, openid, started))
        self._tasks.add(task)
        self._who[task] = mask_openid(openid)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._who.pop(task, None)

    async def _deliver(self, run: asyncio.Future[Answered], openid: str,
                       started: float) -> None:
        masked = mask_openid(openid)
        left = max(0.1, started + LATE_LIMIT - time.monotonic())
        try:
            reply, after = await asyncio.wait_for(run, left)
        except TimeoutError:
            self.metrics.late_deliveries.labels("failed").inc()
            self.log.error("late_delivery_abandoned", openid=masked, why="handler ran past 55 s")
            return
        except Exception as exc:  # noqa: BLE001 - never a 5xx or a crash
            self.metrics.late_deliveries.labels("failed").inc()
            self.log.error("late_delivery_failed", openid=masked, why=f"handler raised {exc!r}")
            return
        if reply is None:
            return
        reply, *rest = _parts([reply])
        after = (*rest, *after)
        payload = reply.custom_message(openid)
        if payload is None:
            self.metrics.late_deliveries.labels("failed").inc()
            self.log.error("late_delivery_failed", openid=masked, reply_type=reply.msg_type,
                           why="this reply type has no customer-service form")
            return
        tries = 0
        while True:
            tries += 1
            try:
                await self.api.send_custom(payload, deadline=started + LATE_LIMIT)
                break
            except WeChatAPIError as exc:
                retry_safe = isinstance(exc, NotSent) or exc.errcode == -1
                pause = _SEND_BACKOFF * 2 ** (tries - 1)
                if (retry_safe and tries < _SEND_TRIES
                        and time.monotonic() + pause < started + LATE_LIMIT):
                    await asyncio.sleep(pause)
                    continue
                self._refused(exc)
                result = "refused" if exc.errcode in _REFUSED else "failed"
                self.metrics.late_deliveries.labels(result).inc()
                self.log.warning("late_delivery_" + result, openid=masked, errcode=exc.errcode,
                                 errmsg=exc.errmsg, tries=tries,
                                 outcome_unknown=not retry_safe and exc.errcode is None)
                return
        self.metrics.late_deliveries.labels("sent").inc()
        self.log.info("late_delivery_sent", openid=masked,
                      late_ms=round((time.monotonic() - started) * 1000))
        if after:  # the rule's further replies, now that the first one is out
            self.follow_up(after, openid)

    def follow_up(self, replies: Sequence[Reply], openid: str) -> None:
        """Send `replies` in order by customer-service message, after the passive reply."""
        task = asyncio.get_running_loop().create_task(
            self._follow_up(_parts(replies), openid, time.monotonic()))
        self._tasks.add(task)
        self._who[task] = mask_openid(openid)
        task.add_done_callback(self._forget)

    async def _follow_up(self, replies: Sequence[Reply], openid: str, started: float) -> None:
        # The passive reply is on its way back through WeChat; a message sent at once could
        # overtake it, and the follower would read the rule's replies out of order.
        await asyncio.sleep(FOLLOW_UP_DELAY)
        for i, reply in enumerate(replies):
            payload = reply.custom_message(openid)
            try:
                if payload is None:
                    raise WeChatAPIError(None, f"a {reply.msg_type} reply has no "
                                         "customer-service form")
                await self.api.send_custom(payload, deadline=started + LATE_LIMIT)
            except WeChatAPIError as exc:
                self._refused(exc)
                # Stop: the rest would arrive out of order, or be refused the same way.
                self.metrics.follow_ups.labels("failed").inc(len(replies) - i)
                self.log.warning("follow_up_failed", openid=mask_openid(openid),
                                 errcode=exc.errcode, errmsg=exc.errmsg, sent=i,
                                 left=len(replies) - i)
                return
            self.metrics.follow_ups.labels("sent").inc()

    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109 - left-behind count needs it
        """Wait up to `timeout` s for pending deliveries; return how many were left behind."""
        # Again while new ones appear: a late reply that goes out starts its follow-ups (the
        # rest of a long text, a rule's other replies) while this waits.
        until = time.monotonic() + timeout
        while self._tasks and (wait := until - time.monotonic()) > 0:
            await asyncio.wait(set(self._tasks), timeout=wait)
        left = list(self._tasks)
        if left:
            # Said loudly, one line per follower, so nobody's reply disappears silently.
            for task in left:
                self.log.error("late_delivery_abandoned", openid=self._who.get(task, "?"),
                               why="shutdown grace period ran out")
                self.metrics.late_deliveries.labels("failed").inc()
                task.cancel()
            await asyncio.wait(left, timeout=1.0)
            self.log.error("late_deliveries_abandoned_at_shutdown", count=len(left))
        return len(left)


def _parts(replies: Sequence[Reply]) -> list[Reply]:
    """`replies` with each text longer than one customer-service message in parts, in order."""
    out: list[Reply] = []
    for reply in replies:
        text = xml_safe(reply.content) if isinstance(reply, TextReply) else ""
        if size(text) > CUSTOM_BYTES:
            out += [TextReply(part) for part in split(text, CUSTOM_BYTES)]
        else:
            out.append(reply)
    return out
