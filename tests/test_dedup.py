"""Dedup leases against a real redis-server: a live holder keeps its push, a dead one's is
taken over, and a holder that lost its lease cannot overwrite the reply that replaced it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from wxhook.server.dedup import Dedup
from wxhook.server.store.redis import RedisStore

pytestmark = pytest.mark.redis
NS = "wxhook:wxtest:"
LEASE = 0.3


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[RedisStore]]:
    """Two clients of one Redis: two instances."""
    pair = [RedisStore(redis_url), RedisStore(redis_url)]
    yield pair
    for s in pair:
        await s.aclose()


def claim_and_die(redis_url: str, key: str) -> None:
    """A holder that claims and then vanishes: its loop (its process) ends mid-handler,
    with no settle and no renewal after it."""
    async def run() -> None:
        store = RedisStore(redis_url)
        assert await Dedup(store, namespace=NS, lease=LEASE).claim(key)
        await store.aclose()

    asyncio.run(run())


async def test_a_retry_takes_over_the_claim_of_a_holder_that_died(redis_url, stores):
    await asyncio.to_thread(claim_and_die, redis_url, "k")
    retry = Dedup(stores[0], namespace=NS, lease=LEASE)
    started = time.monotonic()
    assert not await retry.claim("k")  # the dead holder's lease still runs...
    with capture_logs() as logs:
        assert await retry.replay("k", started + 4) is None  # ...then this try owns the push
    # The lease (Redis's own clock, so real time) bounds the wait, not the 4 s deadline: at
    # the deadline replay() answers "success", never None.
    assert time.monotonic() - started < 2.0
    assert [e["event"] for e in logs] == ["dedup_claim_taken_over"]
    await retry.settle("k", b"the reply")
    third = Dedup(stores[1], namespace=NS, lease=LEASE)
    assert not await third.claim("k")
    assert await third.replay("k", time.monotonic() + 1) == b"the reply"


async def test_a_live_holder_keeps_its_claim_past_the_lease(stores):
    holder = Dedup(stores[0], namespace=NS, lease=LEASE)
    retry = Dedup(stores[1], namespace=NS, lease=LEASE)
    assert await holder.claim("k")

    async def slow_handler() -> None:
        await asyncio.sleep(4 * LEASE)  # renewed all along
        await holder.settle("k", b"the holder's reply")

    task = asyncio.create_task(slow_handler())
    started = time.monotonic()
    assert not await retry.claim("k")
    assert await retry.replay("k", started + 4) == b"the holder's reply"
    assert time.monotonic() - started >= 3.5 * LEASE
    await task


async def test_a_holder_that_lost_its_lease_cannot_overwrite_the_new_reply(stores):
    stalled = Dedup(stores[0], namespace=NS, lease=LEASE)
    other = Dedup(stores[1], namespace=NS, lease=LEASE)
    assert await stalled.claim("k")
    # The whole loop stalls past the lease (on purpose): no renewal gets through.
    time.sleep(LEASE + 0.1)  # noqa: ASYNC251 - blocking the loop is the stall under test
    assert await other.claim("k")  # a retry finds the claim expired and takes the push
    await other.settle("k", b"the new holder's reply")
    with capture_logs() as logs:
        await stalled.settle("k", b"the stalled holder's reply")
    assert [e["event"] for e in logs] == ["dedup_claim_lost"]
    assert await stores[0].get(NS + "dedup:k") == b"the new holder's reply"
