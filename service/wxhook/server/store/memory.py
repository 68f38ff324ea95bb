"""One-process state: the default when REDIS_URL is not set.

It holds the access token, its refresh lock and the OAuth flow's short-lived records, and
serves as Redis's stand-in while Redis is unreachable. A cachetools TLRUCache gives every
key its own TTL and a bound (least recently used first); keys without a TTL (the token)
sit in a dict of their own and are never evicted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TLRUCache

_Item = tuple[bytes, float]  # value, expiry on the store's clock


def _expiry(_key: str, item: _Item, _now: float) -> float:
    return item[1]


class MemoryStore:
    """Per-key TTLs, bounded size; hashes in a plain dict (lost on restart)."""

    shared = False

    def __init__(self, *, maxsize: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._kv: TLRUCache[str, _Item] = TLRUCache(maxsize, ttu=_expiry, timer=clock)
        self._forever: dict[str, bytes] = {}
        self._hashes: dict[str, dict[str, str]] = {}

    @property
    def size(self) -> int:
        """Keys held, expired ones not yet swept included (not __len__: an empty store
        must stay truthy for `store or default`)."""
        return len(self._kv) + len(self._forever)

    async def get(self, key: str) -> bytes | None:
        return self._get(key)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        if nx and self._get(key) is not None:
            return False
        if ttl is None:
            self._kv.pop(key, None)
            self._forever[key] = value
        else:
            self._forever.pop(key, None)
            self._kv[key] = (value, self.clock() + ttl)
        return True

    async def delete(self, key: str) -> None:
        self._kv.pop(key, None)
        self._forever.pop(key, None)

    async def delete_if(self, key: str, expected: bytes) -> bool:
        if self._get(key) != expected:
            return False
        await self.delete(key)
        return True

    async def replace_if(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        if self._get(key) != expected:
            return False
        return await self.set(key, value, ttl=ttl)

    async def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._hashes.get(key, {}))

    async def hset(self, key: str, mapping: dict[str, str]) -> None:
        self._hashes.setdefault(key, {}).update(mapping)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _get(self, key: str) -> bytes | None:
        item = self._kv.get(key)
        return self._forever.get(key) if item is None else item[0]
