"""Signatures, the timestamp window, and the nonce memory (guard step 1)."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import time
from array import array
from collections.abc import Callable

from wxhook.errors import FreshnessError, GuardError, SignatureError
from wxhook.store import Store


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 hex of the parts sorted and concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


# The shapes WeChat sends, and nothing else. `sign` sorts and concatenates, so characters can
# move between a timestamp and a nonce that sort next to each other without changing the
# signature ("0120" and T sign as "012" and "0"+T). With one spelling of a timestamp and the
# window, no such move passes: it gives the timestamp a leading zero, or changes it by a
# power of ten. fullmatch, never `$` (it matches before a trailing "\n"); [0-9], never \d (it takes
# "١٧١٤"); re.ASCII so that no class ever widens to Unicode.
_TIMESTAMP = re.compile(r"[1-9][0-9]{0,11}", re.ASCII)       # int() also takes "+1", " 1 ", "1_0"
_NONCE = re.compile(r"[0-9A-Za-z]{1,32}", re.ASCII)          # decimal from WeChat; "test" in SDKs
_SIGNATURE = re.compile(r"[0-9A-Fa-f]{40}", re.ASCII)        # SHA-1 hex


def verify(expected_parts: tuple[str, ...], given: str, *, what: str = "signature") -> None:
    """Raise SignatureError unless `given` is the signature of the parts (constant time)."""
    if not _SIGNATURE.fullmatch(given):
        raise SignatureError(f"{what} is not 40 hex digits", reason=what)
    if not hmac.compare_digest(sign(*expected_parts).encode(), given.lower().encode()):
        raise SignatureError(f"{what} does not match", reason=what)


def parse_timestamp(timestamp: str) -> int:
    """The timestamp as int, or FreshnessError (400) unless it is written as WeChat writes it."""
    if not _TIMESTAMP.fullmatch(timestamp):
        raise FreshnessError("timestamp is not a plain decimal number of seconds "
                             "(ASCII digits, no sign, space or leading zero)", status=400)
    return int(timestamp)


def check_fresh(timestamp: str, *, window: int, now: float | None = None) -> int:
    """Return the timestamp as int, or raise if it is not canonical decimal within
    `window` seconds of now.

    In plaintext mode the body is not signed, so a captured signature could be replayed
    with any body forever; the window bounds that to minutes, the nonce memory to once.
    """
    return _within(parse_timestamp(timestamp), window, time.time() if now is None else now)


def check_signed(token: str, signature: str, timestamp: str, nonce: str, *, window: int,
                 now: float) -> int:
    """The timestamp of a query WeChat signed (signature, timestamp, nonce), or GuardError."""
    # The shapes before the signature: a moved digit leaves the signature valid.
    if not _NONCE.fullmatch(nonce):
        raise GuardError("nonce is not 1 to 32 ASCII letters or digits", reason="nonce")
    ts = parse_timestamp(timestamp)
    verify((token, timestamp, nonce), signature)
    return _within(ts, window, now)


def _within(ts: int, window: int, now: float) -> int:
    if abs(now - ts) > window:
        raise FreshnessError(f"timestamp is {int(now - ts)} s away from now (window {window} s)")
    return ts


class _NonceTable:
    """One second's nonces: an open-addressing table in three arrays of machine words.

    A push leaves its nonce here for the whole timestamp window, so under a flood this
    holds a quarter of a million entries. As a dict of str to (digest, arrival) each was
    four Python objects (the nonce string, a tuple, a bytes object, a dict slot); here a
    slot is three machine words (key, digest, arrival) at a load of at most a half
    (bench/README.md, "Hand-written structures", has the memory of both).
    """

    __slots__ = ("arrivals", "digests", "keys", "mask", "used")

    def __init__(self, size: int = 64) -> None:
        self.keys = array("Q", bytes(8 * size))      # 0 marks an empty slot
        self.digests = array("Q", bytes(8 * size))
        self.arrivals = array("I", bytes(4 * size))  # second of first arrival
        self.mask = size - 1
        self.used = 0

    def first_seen(self, key: int, digest: int, arrival: int) -> int | None:
        """Remember key -> (digest, arrival); the first arrival of this key with this
        digest, or None when the key came before with another digest."""
        keys, mask = self.keys, self.mask
        i = key & mask
        while True:
            k = keys[i]
            if k == 0:
                break
            if k == key:
                return self.arrivals[i] if self.digests[i] == digest else None
            i = (i + 1) & mask
        keys[i] = key
        self.digests[i] = digest
        self.arrivals[i] = arrival
        self.used += 1
        if self.used * 2 > mask:
            self._grow()
        return arrival

    def _grow(self) -> None:
        # Every table starts small and doubles as its second fills: each entry is filed
        # again in the doubled table.
        old = zip(self.keys, self.digests, self.arrivals, strict=True)
        size = 2 * (self.mask + 1)
        self.keys, self.digests = array("Q", bytes(8 * size)), array("Q", bytes(8 * size))
        self.arrivals = array("I", bytes(4 * size))
        self.mask, self.used = size - 1, 0
        for key, digest, arrival in old:
            if key:
                self.first_seen(key, digest, arrival)


def _nonce_key(nonce: str) -> int:
    """A non-zero 64-bit word per nonce: the number itself for WeChat's decimal nonces
    ("0123" is not "123", nor is "١٢٣": only the canonical ASCII spelling counts as a
    number), a keyed hash with the top bit set for anything else."""
    if nonce.isascii() and nonce.isdigit() and len(nonce) < 18 and nonce[0] != "0":
        return int(nonce) + 1
    h = hashlib.blake2b(nonce.encode(), digest_size=8, person=b"wxhook-nonce").digest()
    return int.from_bytes(h, "big") | (1 << 63)


class LocalNonces:
    """Nonce memory for one process: a table of nonces per timestamp second, dropped whole
    once the second leaves the window.

    Each (timestamp, nonce) keeps the digest of the body it first came with and when it
    first came: the same body again is WeChat retrying, another body a replay. Bounded:
    under a flood the oldest seconds go first, and from then on pushes stamped in a
    forgotten second are refused rather than taken for new (the window shrinks; what is
    accepted is always remembered). Kept apart from the dedup replies, which must outlive
    a flood.
    """

    def __init__(self, *, window: int, maxsize: int = 250_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.maxsize = maxsize
        self.clock = clock
        self._by_ts: dict[int, _NonceTable] = {}
        self._count = 0
        self._swept = 0
        self._forgotten = -1  # the newest second dropped to stay within maxsize

    async def first_seen(self, ts: int, nonce: str, digest: bytes) -> float | None:
        """When this (timestamp, nonce) first came with this body; None when it came with
        another body first, or its second is no longer remembered."""
        now = int(self.clock())
        if now != self._swept:
            self._sweep(now)
        if ts <= self._forgotten:
            return None
        table = self._by_ts.get(ts)
        if table is None:
            table = self._by_ts[ts] = _NonceTable()
        used = table.used
        # 8 bytes of digest: forging a second body with the same one is a 2^64 search.
        first = table.first_seen(_nonce_key(nonce), int.from_bytes(digest[:8], "big"), now)
        if table.used != used:
            self._count += 1
            if self._count > self.maxsize:
                oldest = min(self._by_ts)
                self._forgotten = max(self._forgotten, oldest)
                self._drop(oldest)
                if oldest == ts:
                    return None
        return None if first is None else float(first)

    def _sweep(self, now: int) -> None:
        self._swept = now
        for ts in [t for t in self._by_ts if t < now - self.window - 1]:
            self._drop(ts)

    def _drop(self, ts: int) -> None:
        table = self._by_ts.pop(ts, None)
        if table is not None:
            self._count -= table.used


_ARRIVAL = struct.Struct(">Q")


class SharedNonces:
    """Nonce memory in the shared store (Redis): every instance sees every nonce."""

    def __init__(self, store: Store, *, namespace: str, window: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.prefix = namespace + "nonce:"
        self.window = window
        self.clock = clock

    async def first_seen(self, ts: int, nonce: str, digest: bytes) -> float | None:
        """When this (timestamp, nonce) first came with this body; None for another body."""
        key = f"{self.prefix}{ts}:{nonce}"
        now = self.clock()
        ttl = max(1.0, ts + self.window + 1 - now)  # until the window rejects ts
        value = digest + _ARRIVAL.pack(int(now))
        if await self.store.set(key, value, ttl=ttl, nx=True):
            return float(int(now))
        seen = await self.store.get(key)
        if seen is None:  # expired in between: the window is closing on it anyway
            return float(int(now))
        if len(seen) == len(digest):  # stored by an instance that kept the digest alone
            return float(int(now)) if seen == digest else None
        if seen[:-_ARRIVAL.size] != digest:
            return None
        return float(_ARRIVAL.unpack_from(seen, len(seen) - _ARRIVAL.size)[0])
