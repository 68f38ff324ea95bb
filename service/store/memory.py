"""One-process state on cachetools: the default when REDIS_URL is not set."""

from __future__ import annotations

import math
import time

from cachetools import TLRUCache


def _expiry(_key: str, value: tuple[bytes, float], _now: float) -> float:
    return value[1]


class MemoryStore:
    """Per-key TTLs on a bounded TLRU cache; hashes in a plain dict (lost on restart)."""

    shared = False

    def __init__(self, *, maxsize: int = 200_000) -> None:
        self._kv: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=maxsize, ttu=_expiry, timer=time.monotonic
        )
        self._hashes: dict[str, dict[str, str]] = {}

    async def get(self, key: str) -> bytes | None:
        item = self._kv.get(key)
        return None if item is None else item[0]

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        if nx and self._kv.get(key) is not None:
            return False
        self._kv[key] = (value, math.inf if ttl is None else time.monotonic() + ttl)
        return True

    async def delete(self, key: str) -> None:
        self._kv.pop(key, None)

    async def delete_if(self, key: str, expected: bytes) -> bool:
        item = self._kv.get(key)
        if item is None or item[0] != expected:
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
