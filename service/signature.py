"""Signatures, the timestamp window, and the nonce memory (guard step 1)."""

from __future__ import annotations

import hashlib
import hmac
import time
from array import array
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


class _NonceTable:
    """One second's nonces: an open-addressing table in two arrays of 64-bit words.

    A plaintext push leaves its nonce here for the whole timestamp window. As a dict of
    int to int that was ~94 bytes an entry (two int objects and a slot); here it is 16
    bytes a slot at a load of at most a half.
    """

    __slots__ = ("digests", "keys", "mask", "used")

    def __init__(self, size: int = 64) -> None:
        self.keys = array("Q", bytes(8 * size))      # 0 marks an empty slot
        self.digests = array("Q", bytes(8 * size))
        self.mask = size - 1
        self.used = 0

    def first_seen(self, key: int, digest: int) -> bool:
        """Remember key -> digest; False when key came before with another digest."""
        keys, mask = self.keys, self.mask
        i = key & mask
        while True:
            k = keys[i]
            if k == 0:
                break
            if k == key:
                return bool(self.digests[i] == digest)
            i = (i + 1) & mask
        keys[i] = key
        self.digests[i] = digest
        self.used += 1
        if self.used * 2 > mask:
            self._grow()
        return True

    def _grow(self) -> None:
        keys, digests = self.keys, self.digests
        size = 2 * (self.mask + 1)
        self.keys, self.digests = array("Q", bytes(8 * size)), array("Q", bytes(8 * size))
        self.mask, self.used = size - 1, 0
        for key, digest in zip(keys, digests, strict=True):
            if key:
                self.first_seen(key, digest)


def _nonce_key(nonce: str) -> int:
    """A non-zero 64-bit word per nonce: the number itself for WeChat's decimal nonces
    ("0123" is not "123", nor is "١٢٣": only the canonical ASCII spelling counts as a
    number), a keyed hash with the top bit set for anything else."""
    if nonce.isascii() and nonce.isdigit() and len(nonce) < 18 and nonce[0] != "0":
        return int(nonce) + 1
    h = hashlib.blake2b(nonce.encode(), digest_size=8, person=b"wxhook-nonce").digest()
    return int.from_bytes(h, "big") | (1 << 63)


class LocalNonces:
    """Nonce memory for one process: per-timestamp tables, dropped as they leave the window.

    A (timestamp, nonce) seen before is fine with the same body (WeChat retrying) and a
    replay with another. An entry is needed only while its timestamp passes check_fresh, so
    whole seconds go at once; under a flood the oldest seconds go first. Kept apart from
    the dedup replies, which must outlive a flood.
    """

    def __init__(self, *, window: int, maxsize: int = 250_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.maxsize = maxsize
        self.clock = clock
        self._by_ts: dict[int, _NonceTable] = {}
        self._count = 0
        self._swept = 0

    async def first_seen(self, ts: int, nonce: str, digest: bytes) -> bool:
        """False when this timestamp and nonce came before with a different body."""
        now = int(self.clock())
        if now != self._swept:
            self._sweep(now)
        table = self._by_ts.get(ts)
        if table is None:
            table = self._by_ts[ts] = _NonceTable()
        used = table.used
        # 8 bytes of digest: forging a second body with the same one is a 2^64 search.
        first = table.first_seen(_nonce_key(nonce), int.from_bytes(digest[:8], "big"))
        if table.used != used:
            self._count += 1
            if self._count > self.maxsize:
                self._drop(min(self._by_ts))
        return first

    def _sweep(self, now: int) -> None:
        self._swept = now
        for ts in [t for t in self._by_ts if t < now - self.window - 1]:
            self._drop(ts)

    def _drop(self, ts: int) -> None:
        table = self._by_ts.pop(ts, None)
        if table is not None:
            self._count -= table.used


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
