"""Signatures, the timestamp window, and the nonce memory (guard step 1)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from .errors import FreshnessError, SignatureError
from .store.base import Store


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 hex of the parts sorted and concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def verify(expected_parts: tuple[str, ...], given: str, *, what: str = "signature") -> None:
    """Raise SignatureError unless `given` is the signature of the parts (constant time)."""
    if not given or not hmac.compare_digest(sign(*expected_parts), given.lower()):
        raise SignatureError(f"{what} does not match", reason=what)


def check_fresh(timestamp: str, *, window: int, now: float | None = None) -> int:
    """Return the timestamp as int, or raise if it is not within `window` seconds of now.

    In plaintext mode the body is not signed, so a captured signature could be replayed
    with any body forever; the window bounds that to minutes, the nonce memory to once.
    """
    try:
        ts = int(timestamp)
    except ValueError:
        raise FreshnessError("timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > window:
        raise FreshnessError(f"timestamp is {int(current - ts)} s away from now (window {window} s)")
    return ts


_LOW60 = (1 << 60) - 1


class LocalNonces:
    """Nonce memory for one process: per-timestamp buckets, dropped as they leave the window.

    A (timestamp, nonce) seen before is fine with the same body (WeChat retrying) and a
    replay with another. An entry is needed only while its timestamp passes check_fresh, so
    whole seconds go at once; under a flood the oldest seconds go first. Kept apart from
    the dedup replies, which must outlive a flood.

    Every plaintext push leaves an entry for the whole window, so entries are small ints
    where they can be: WeChat's nonces are decimal numbers, and an int below 2^60 takes
    32 bytes where the string and the digest bytes took 64 and 48.
    """

    def __init__(self, *, window: int, maxsize: int = 500_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.maxsize = maxsize
        self.clock = clock
        self._by_ts: dict[int, dict[int | str, int]] = {}
        self._count = 0
        self._swept = 0

    async def first_seen(self, ts: int, nonce: str, digest: bytes) -> bool:
        """False when this timestamp and nonce came before with a different body."""
        now = int(self.clock())
        if now != self._swept:
            self._sweep(now)
        bucket = self._by_ts.get(ts)
        if bucket is None:
            bucket = self._by_ts[ts] = {}
        # "0123" and "123" are different nonces: only the canonical spelling becomes an int.
        key: int | str = (int(nonce) if nonce.isdigit() and len(nonce) < 18
                          and nonce[0] != "0" else nonce)
        body = int.from_bytes(digest[:8], "big") & _LOW60  # still a 2^60 search to forge
        seen = bucket.get(key)
        if seen is None:
            bucket[key] = body
            self._count += 1
            if self._count > self.maxsize:
                self._drop(min(self._by_ts))
            return True
        return seen == body

    def _sweep(self, now: int) -> None:
        self._swept = now
        for ts in [t for t in self._by_ts if t < now - self.window - 1]:
            self._drop(ts)

    def _drop(self, ts: int) -> None:
        self._count -= len(self._by_ts.pop(ts, ()))


class SharedNonces:
    """Nonce memory in the shared store (Redis): every instance sees every nonce."""

    def __init__(self, store: Store, *, namespace: str, window: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.prefix = namespace + "nonce:"
        self.window = window
        self.clock = clock

    async def first_seen(self, ts: int, nonce: str, digest: bytes) -> bool:
        """False when this timestamp and nonce came before with a different body."""
        key = f"{self.prefix}{ts}:{nonce}"
        ttl = max(1.0, ts + self.window + 1 - self.clock())  # until the window rejects ts
        if await self.store.set(key, digest, ttl=ttl, nx=True):
            return True
        seen = await self.store.get(key)
        return seen is None or seen == digest
