"""The retry memory of one process: replies kept for WeChat's retries, first in, first out.

Every push leaves its reply record here for the dedup TTL, so under a campaign's flood this
holds hundreds of thousands of entries. As a dict of str to bytes an entry is four Python
objects (a ~100-byte key string, a bytes object, a dict slot, an expiry bucket). Here
nothing per entry is a Python object: a 128-bit digest of the key, its expiry and where
its bytes lie take 32 bytes in a ring, the bytes themselves sit in a circular log, and an
open-addressing index of 4-byte slots finds them (bench/README.md, "Hand-written
structures", has the memory of both). Every entry has the same TTL, so entries expire in
the order they came and the oldest go first when the ring or the log is full.

The memory is anonymous mmap: pages cost RSS only once written, so a quiet server does not
pay for the bound it never reaches, and pages behind the oldest entry are handed back.
"""

from __future__ import annotations

import hashlib
import mmap
import time
from collections.abc import Callable

_M64 = (1 << 64) - 1
_RELEASE = 1 << 20  # hand back dead memory a MiB at a time


def digest(key: str) -> int:
    """The 128-bit key an entry is filed under (collisions: ~2^-128 a pair)."""
    h = hashlib.blake2b(key.encode(), digest_size=16, person=b"wxhook-dedup").digest()
    return int.from_bytes(h, "little")


class _Region:
    """An anonymous mapping: its pages cost memory once written, until handed back."""

    def __init__(self, size: int) -> None:
        self.size = size
        # private: handed-back pages of a shared mapping would stay allocated as shmem
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)

    def release(self, start: int, end: int) -> None:
        """Hand back the whole pages in [start, end): they read as zeros after."""
        lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        hi = end // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            self.map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def release_free(self, used_from: int, used_to: int, *, empty: bool) -> None:
        """Hand back what lies outside the cyclic span [used_from, used_to) in use."""
        if empty:
            self.release(0, self.size)
        elif used_from < used_to:
            self.release(used_to, self.size)
            self.release(0, used_from)
        else:
            self.release(used_to, used_from)


class FifoMemory:
    """128-bit key -> bytes for `ttl` seconds; at most `maxsize` entries, `max_bytes` bytes."""

    def __init__(self, *, ttl: float, maxsize: int = 1 << 18, max_bytes: int = 24 << 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < maxsize < 1 << 31 or not 0 < max_bytes < 1 << 32:
            raise ValueError("maxsize must be in (0, 2^31), max_bytes in (0, 2^32)")
        self.ttl_ms = int(ttl * 1000)
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.clock = clock
        # ring[4p:4p+4]: key's low word, high word, expiry (ms), offset << 32 | length
        self._ring_region = _Region(32 * maxsize)
        self._ring = memoryview(self._ring_region.map).cast("Q")
        self._log_region = _Region(max_bytes)
        self._log = self._log_region.map
        slots = 1 << (2 * maxsize - 1).bit_length()  # a load of at most a half
        self._index = memoryview(_Region(4 * slots).map).cast("I")  # position + 1; 0: empty
        self._mask = slots - 1
        self._tail = 0     # ring position of the oldest entry
        self._count = 0
        self._write = 0    # where the next bytes go in the log
        self._bytes = 0    # bytes held by the entries
        self._dropped = 0  # bytes of ring and log freed since memory was last handed back

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of the log in use (a value's length; an empty one takes one)."""
        return self._bytes

    def get(self, key: int) -> bytes | None:
        """What was put under `key` within the TTL, or None."""
        pos = self._find(key)
        if pos < 0:
            return None
        ring = self._ring
        if ring[4 * pos + 2] <= self.clock() * 1000:
            return None
        meta = ring[4 * pos + 3]
        off = meta >> 32
        return self._log[off:off + (meta & 0xFFFFFFFF)]

    def put(self, key: int, value: bytes) -> bool:
        """Keep `value` under `key` for the TTL (a later put of a key wins over an earlier).
        False when the value is larger than the whole log: it is not kept."""
        n = len(value)
        room = n or 1  # an empty value still takes a byte: no two entries start alike
        if room > self.max_bytes:
            return False
        now = int(self.clock() * 1000)
        ring = self._ring
        while self._count and ring[4 * self._tail + 2] <= now:
            self._drop()
        while self._count >= self.maxsize or self._bytes + room > self.max_bytes:
            self._drop()
        off = self._room(room)
        self._log[off:off + n] = value
        self._write = off + room
        self._bytes += room
        pos = (self._tail + self._count) % self.maxsize
        lo, hi = key & _M64, key >> 64
        ring[4 * pos] = lo
        ring[4 * pos + 1] = hi
        ring[4 * pos + 2] = now + self.ttl_ms
        ring[4 * pos + 3] = off << 32 | n
        self._count += 1
        index, mask = self._index, self._mask
        i = lo & mask
        while True:
            v = index[i]
            if v == 0:
                break
            if ring[4 * v - 4] == lo and ring[4 * v - 3] == hi:
                break  # the earlier entry stays in the ring, no longer found
            i = (i + 1) & mask
        index[i] = pos + 1
        if self._dropped >= _RELEASE:
            self._release()
        return True

    def _find(self, key: int) -> int:
        ring, index, mask = self._ring, self._index, self._mask
        lo, hi = key & _M64, key >> 64
        i = lo & mask
        while True:
            v = index[i]
            if v == 0:
                return -1
            if ring[4 * v - 4] == lo and ring[4 * v - 3] == hi:
                return v - 1
            i = (i + 1) & mask

    def _room(self, n: int) -> int:
        """An offset with n free bytes in the log, dropping the oldest entries as needed."""
        while self._count:
            oldest = self._ring[4 * self._tail + 3] >> 32
            w = self._write
            if w > oldest:  # in use: [oldest, w); free: after w, and before oldest
                if w + n <= self.max_bytes:
                    return w
                if n <= oldest:
                    return 0
            elif w + n <= oldest:  # wrapped: in use [oldest, end) and [0, w)
                return w
            self._drop()
        return 0

    def _drop(self) -> None:
        """Forget the oldest entry."""
        ring, index, mask = self._ring, self._index, self._mask
        pos = self._tail
        meta = ring[4 * pos + 3]
        i = ring[4 * pos] & mask
        while (v := index[i]) != 0 and v != pos + 1:
            i = (i + 1) & mask
        if v:  # unless a later put of its key took over its slot: unindex it, and move
            # back the entries after it in the probe run so that no lookup stops short
            j = i
            while True:
                j = (j + 1) & mask
                v = index[j]
                if v == 0:
                    break
                home = ring[4 * v - 4] & mask  # it may move to i unless home is in (i, j]
                if not (i < home <= j if i < j else home > i or home <= j):
                    index[i] = v
                    i = j
            index[i] = 0
        n = (meta & 0xFFFFFFFF) or 1
        self._bytes -= n
        self._dropped += n + 32
        self._tail = (pos + 1) % self.maxsize
        self._count -= 1

    def _release(self) -> None:
        """Hand back the pages of ring and log that no entry uses (a MiB freed at a time)."""
        self._dropped = 0
        empty = self._count == 0
        head = (self._tail + self._count) % self.maxsize
        self._ring_region.release_free(32 * self._tail, 32 * head, empty=empty)
        oldest = self._ring[4 * self._tail + 3] >> 32
        self._log_region.release_free(oldest, self._write, empty=empty)
