"""Redis commands of one event-loop turn sent as one pipeline (service/store/redis.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Unreachable, timed out, still loading its dataset, wrong password (AuthenticationError
# is a ConnectionError), a master demoted to replica (READONLY), a cluster in failover
# (CLUSTERDOWN, a slot no master serves, TRYAGAIN): all mean "answer locally", never "fail
# the push".
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, ReadOnlyError, ClusterError,
               SlotNotCoveredError, RedisClusterUnreachableError, TryAgainError)


class AutoPipeline:
    """GETs and SETs issued in one turn of the event loop go to Redis as one pipeline.

    Every push makes two or three of them (nonce, dedup claim, dedup record), and redis-py
    spends far less CPU on a command among many in a pipeline than on one sent alone
    (bench/README.md, "Several workers with Redis"). A command waits for at most
    the rest of the current loop turn, not for a timer. An error of one command (WRONGTYPE,
    say) is that command's alone; a malformed one (the Store API takes bytes: a bug) fails
    its whole pipeline, as a RuntimeError.
    """

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
        self._queue: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None  # takes the queue when it runs
        self._flushing: set[asyncio.Task[None]] = set()

    def submit(self, command: Callable[[Any], Any]) -> asyncio.Future[Any]:
        """Queue `command(pipeline)`; the future gets its reply or its error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        sender = self._sender
        if sender is None or sender.done() or sender.get_loop() is not loop:
            # The first command of this turn: a task sends the lot once the turn is done.
            # (Commands queued for a sender of a loop since closed went with their callers.)
            self._queue = []
            sender = self._sender = loop.create_task(self._flush())
            self._flushing.add(sender)  # (the loop keeps only a weak reference)
            sender.add_done_callback(self._sent)
        self._queue.append((command, fut))
        return fut

    async def drain(self) -> None:
        """Wait for the pipelines under way: a client closed under one would see it open a
        connection afterwards, and leave that socket open."""
        loop = asyncio.get_running_loop()
        while mine := [t for t in self._flushing if t.get_loop() is loop]:
            await asyncio.gather(*mine, return_exceptions=True)

    def _sent(self, sender: asyncio.Task[None]) -> None:
        self._flushing.discard(sender)
        if self._sender is sender:  # cancelled before it ran: its commands were never sent
            batch, self._queue, self._sender = self._queue, [], None
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RedisConnectionError("the pipeline was cancelled"))

    async def _flush(self) -> None:
        queued, self._queue, self._sender = self._queue, [], None
        sent: list[asyncio.Future[Any]] = []
        replies: list[Any] = []
        error: BaseException | None = None
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for command, fut in queued:
                    if not fut.done():  # (done: its caller gave up before it was sent)
                        command(pipe)
                        sent.append(fut)
                replies = await pipe.execute(raise_on_error=False) if sent else []
        except BaseException as exc:
            error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            # Whatever happened, every caller hears back: a future left pending would hang
            # a push until WeChat gives up on it. (replies is empty when the pipeline failed.)
            for fut, reply in zip(sent, replies, strict=False):
                if fut.done():  # its caller gave up waiting
                    continue
                if isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
            for _, fut in queued:
                if not fut.done():
                    # A fresh error each: one object raised in many tasks piles up tracebacks.
                    fut.set_exception(_fresh(error))


def _fresh(exc: BaseException | None) -> Exception:
    """An error of the same meaning for each command of a pipeline that failed whole."""
    if isinstance(exc, RedisTimeoutError):
        return RedisTimeoutError(str(exc))
    if isinstance(exc, RedisConnectionError):
        return RedisConnectionError(str(exc))
    if exc is None or isinstance(exc, (*UNREACHABLE, asyncio.CancelledError)):
        return RedisConnectionError(f"{type(exc).__name__}: {exc}")
    return RuntimeError(f"Redis pipeline failed: {type(exc).__name__}: {exc}")
