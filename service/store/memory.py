"""One-process state: the default when REDIS_URL is not set.

It holds the access token, its refresh lock and the OAuth flow's short-lived records (a
busy campaign page brings many). What every push leaves has memories of its own, built for
hundreds of thousands of entries: nonces in signature.LocalNonces, retry replies in
store.fifo.FifoMemory. A plain dict with expiry buckets of one second, swept as time
passes, costs a fraction of a general-purpose TTL cache in time and memory; each value
carries its expiry in its last 8 bytes rather than in a (value, expiry) tuple.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable

_EXPIRY = struct.Struct("<d")
_FOREVER = _EXPIRY.pack(math.inf)


def _expiry(item: bytes) -> float:
    return float(_EXPIRY.unpack_from(item, len(item) - 8)[0])


class MemoryStore:
    """Per-key TTLs, bounded size; hashes in a plain dict (lost on restart)."""

    shared = False

    def __init__(self, *, maxsize: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.clock = clock
        self._kv: dict[str, bytes] = {}  # key -> value + packed expiry
        # ceil(expiry) -> keys that expire in that second (or were overwritten since)
        self._buckets: dict[int, list[str]] = {}
        self._swept = int(clock())
        self._hashes: dict[str, dict[str, str]] = {}

    @property
    def size(self) -> int:
        """Keys held, expired ones not yet swept included (not __len__: an empty store
        must stay truthy for `store or default`)."""
        return len(self._kv)

    async def get(self, key: str) -> bytes | None:
        item = self._kv.get(key)
        if item is None or _expiry(item) <= self.clock():
            return None
        return item[:-8]

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        now = self.clock()
        if int(now) > self._swept:
            self._sweep(now)
        kv = self._kv
        if nx:
            item = kv.get(key)
            if item is not None and _expiry(item) > now:
                return False
        if ttl is None:
            kv[key] = value + _FOREVER
        else:
            expiry = now + ttl
            kv[key] = value + _EXPIRY.pack(expiry)
            second = int(expiry) + 1
            bucket = self._buckets.get(second)
            if bucket is None:
                self._buckets[second] = [key]
            else:
                bucket.append(key)
        if len(kv) > self.maxsize:
            self._evict()
        return True

    async def delete(self, key: str) -> None:
        self._kv.pop(key, None)

    async def delete_if(self, key: str, expected: bytes) -> bool:
        item = self._kv.get(key)
        if item is None or item[:-8] != expected or _expiry(item) <= self.clock():
            return False
        del self._kv[key]
        return True

    async def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._hashes.get(key, {}))

    async def hset(self, key: str, mapping: dict[str, str]) -> None:
        self._hashes.setdefault(key, {}).update(mapping)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _sweep(self, now: float) -> None:
        kv, buckets = self._kv, self._buckets
        current = int(now)
        for second in range(self._swept + 1, current + 1):
            for key in buckets.pop(second, ()):
                item = kv.get(key)
                if item is not None and _expiry(item) <= now:
                    del kv[key]
        self._swept = current

    def _evict(self) -> None:
        # Over the bound (a flood): drop what would expire soonest. Keys without a TTL
        # (the token) are never evicted.
        kv, buckets = self._kv, self._buckets
        while len(kv) > self.maxsize and buckets:
            second = min(buckets)
            bucket = buckets[second]
            while bucket and len(kv) > self.maxsize:
                key = bucket.pop()
                item = kv.get(key)
                if item is None:
                    continue
                expiry = _expiry(item)
                if expiry != math.inf and int(expiry) + 1 == second:
                    del kv[key]
            if not bucket:
                del buckets[second]
