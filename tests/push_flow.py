"""Pushes flowing through wxhook instances (in process) while their Redis fails over.

Every handler run is counted by the push it ran for, so a push answered twice shows as a
count of 2 whichever instance ran it, and a push lost shows as a reply other than its own
(WeChat's "success" when a deadline came first).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from wxhook import greeting
from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import Reply, TextReply
from wxhook.router import Context, Router
from wxhook.tools.simulate import Push, decode_reply


async def recovered(stores: list[Any], timeout: float = 15) -> None:
    """Wait until every RedisStore has Redis back (its probe reached the new master)."""
    end = asyncio.get_running_loop().time() + timeout
    while any(s.down_since is not None for s in stores):
        assert asyncio.get_running_loop().time() < end, [s.status() for s in stores]
        await asyncio.sleep(0.05)


async def settled(*apps: Any) -> None:
    """Wait until no app has a push still settling (a reply is recorded after it is sent):
    a store closed under it would look like an outage."""
    while any(app.webhook._running for app in apps):
        await asyncio.sleep(0.01)


def counting_router(runs: collections.Counter[str]) -> Router:
    """Counts each handler run by its push, then answers texts ("got <text>") and greets."""
    router = Router()

    async def count(msg: InboundMessage, ctx: Context) -> Reply | None:
        runs[msg.content if isinstance(msg, TextMessage) else msg.openid] += 1
        return TextReply(f"got {msg.content}") if isinstance(msg, TextMessage) else None

    router.register(count)
    router.include(greeting.router)
    return router


@dataclass
class Sent:
    """One push sent: what it must be answered with, and what it was."""

    key: str  # what the counting router counts its runs by
    expected: str
    push: Push
    replies: list[str] = field(default_factory=list)


class Flow:
    """Sends pushes through the apps in turn, one every `every` seconds, until stopped."""

    def __init__(self, apps: list[Any], make_push: Callable[..., Push], *,
                 tag: str = "flow") -> None:
        self.apps = apps
        self.clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a),
                                          base_url="http://wxhook", timeout=10) for a in apps]
        self.make_push = make_push
        self.tag = tag
        self.sent: list[Sent] = []
        self._n = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._pushes: list[asyncio.Future[Sent]] = []

    async def one(self, *, to: tuple[int, ...] = (0,), subscribe: bool = False) -> Sent:
        """A new push to the apps numbered in `to` at once (more than one: WeChat's retries
        landing on other instances while the first try runs)."""
        n = next(self._n)
        openid = f"o{self.tag}{n:0{27 - len(self.tag)}d}"  # 28 characters, as WeChat's
        if subscribe:
            push = self.make_push("subscribe", openid=openid)
            sent = Sent(openid, f"Welcome, Follower-{openid[-6:]}!", push)
        else:
            push = self.make_push("text", openid=openid, text=f"{self.tag} {n}")
            sent = Sent(f"{self.tag} {n}", f"got {self.tag} {n}", push)
        self.sent.append(sent)
        replies = await asyncio.gather(*(self._post(self.clients[i], push) for i in to))
        sent.replies += replies
        return sent

    async def again(self, sent: Sent, *, to: int) -> None:
        """WeChat's retry of a push sent before, to the app numbered `to`."""
        sent.replies.append(await self._post(self.clients[to], sent.push))

    async def _post(self, client: httpx.AsyncClient, push: Push) -> str:
        r = await client.post("/wechat", params=push.params, content=push.body)
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        return decode_reply(r.content, crypto=None).get("Content", r.text)

    def start(self, *, every: float = 0.02) -> None:
        """Keep sending, alternating between the apps, every fourth push a subscribe."""
        async def run() -> None:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                self._pushes.append(asyncio.ensure_future(
                    self.one(to=(i % len(self.clients),), subscribe=i % 4 == 3)))
                await asyncio.sleep(every)
        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        """Stop sending and wait until every push sent has its answer, and is settled."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await asyncio.gather(*self._pushes)
        await settled(*self.apps)

    def faults(self, runs: collections.Counter[str]) -> list[str]:
        """Every push not answered exactly once with its own reply, said plainly."""
        out = [f"{s.key}: answered {s.replies!r}, expected {s.expected!r}"
               for s in self.sent if set(s.replies) != {s.expected}]
        out += [f"{s.key}: the handler ran {runs[s.key]} times"
                for s in self.sent if runs[s.key] != 1]
        return out

    async def aclose(self) -> None:
        """Close the clients."""
        for c in self.clients:
            await c.aclose()

