"""The retry memory (service/store/fifo.py) against a plain model of what it promises."""

from __future__ import annotations

import ctypes
import mmap

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.support import examples
from wxhook.server.store.fifo import FifoMemory, digest

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FifoAgainstModel(RuleBasedStateMachine):
    """Random puts, gets and passing time; a small ring and log so that they wrap often.

    The model is the list of puts, oldest first. The memory may forget an entry early only
    as the oldest (first in, first out, never a hole), never answers with bytes other than
    the last put under a key, keeps every entry while it and the newer ones fit, and stays
    within both bounds.
    """

    MAXSIZE, MAX_BYTES, LONGEST = 12, 240, 40

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.mem = FifoMemory(ttl=TTL, maxsize=self.MAXSIZE, max_bytes=self.MAX_BYTES,
                              clock=self.clock)
        self.puts: list[tuple[int, bytes, int]] = []  # key, value, expiry (ms)
        self.serial = 0

    keys = st.integers(0, 30).map(lambda i: digest(f"k{i}"))

    @rule(key=keys, size=st.integers(0, LONGEST), fill=st.integers(1, 255))
    def put(self, key: int, size: int, fill: int) -> None:
        self.serial += 1
        value = (bytes([fill]) * (size - 1) + bytes([self.serial % 256]))[:size]
        assert self.mem.put(key, value)
        # The memory keeps expiries in whole milliseconds: so does the model, and compares
        # them as the memory does (a float expiry in seconds here ended up to 1 ms after
        # the memory's, and failed one run in a few hundred).
        self.puts.append((key, value, int(self.clock.now * 1000) + int(TTL * 1000)))

    @rule(key=keys)
    def get(self, key: int) -> None:
        got = self.mem.get(key)
        last = [(v, exp) for k, v, exp in self.puts if k == key][-1:]
        if got is not None:
            ((value, expiry),) = last
            assert expiry > self.clock.now * 1000 and got == value

    @rule(seconds=st.floats(0, 4))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def forgets_only_the_oldest_and_keeps_what_fits(self) -> None:
        now, latest = self.clock.now, {k: i for i, (k, _, _) in enumerate(self.puts)}
        live = [(i, v) for i, (k, v, exp) in enumerate(self.puts)
                if exp > now * 1000 and latest[k] == i]
        got = [self.mem.get(self.puts[i][0]) for i, _ in live]
        assert all(g is None or g == v for g, (_, v) in zip(got, live, strict=True))
        found = [g is not None for g in got]
        # kept entries are a suffix of the live ones: none is forgotten before an older one
        assert found == sorted(found), found
        # and every put from the newest back is kept while they fit in both bounds, counting
        # replaced ones (they keep their place until their turn) and the log's wrap waste
        ok = dict(zip((i for i, _ in live), found, strict=True))
        room = self.MAX_BYTES - 2 * self.LONGEST
        for count, i in enumerate(range(len(self.puts) - 1, -1, -1), start=1):
            room -= len(self.puts[i][1]) or 1
            if room < 0 or count > self.MAXSIZE:
                break
            assert ok.get(i, True), (i, len(self.puts))
        assert len(self.mem) <= self.MAXSIZE and self.mem.nbytes <= self.MAX_BYTES


TestFifoAgainstModel = FifoAgainstModel.TestCase
TestFifoAgainstModel.settings = settings(max_examples=examples(300), stateful_step_count=60,
                                         deadline=None)


def test_equal_sizes_are_kept_exactly_as_a_bounded_fifo():
    # With values that tile the log there is no wrap waste: exactly the last maxsize
    # entries within the TTL are kept.
    clock = Clock()
    mem = FifoMemory(ttl=TTL, maxsize=50, max_bytes=50 * 8, clock=clock)
    keys = [digest(str(i)) for i in range(500)]
    for i, key in enumerate(keys):
        assert mem.put(key, i.to_bytes(8, "big"))
        clock.now += 0.01
    assert [i for i, k in enumerate(keys) if mem.get(k) is not None] == list(range(450, 500))
    assert all(mem.get(keys[i]) == i.to_bytes(8, "big") for i in range(450, 500))
    clock.now += TTL
    assert all(mem.get(k) is None for k in keys)


def test_a_probe_run_survives_dropping_from_its_middle():
    # Keys whose low words share a home slot sit in one probe run; dropping the oldest
    # must move the later ones back, or lookups stop short of them.
    clock = Clock()
    mem = FifoMemory(ttl=TTL, maxsize=8, max_bytes=1024, clock=clock)
    slots = mem._mask + 1
    same_home = [(i << 64) | (5 + i * slots) for i in range(1, 9)]
    wraps = [(i << 64) | (slots - 1 + i * slots) for i in range(1, 4)]  # run wraps to slot 0
    for key in wraps + same_home:
        mem.put(key, key.to_bytes(16, "big"))
    kept = (wraps + same_home)[-8:]
    for key in wraps + same_home:
        assert mem.get(key) == (key.to_bytes(16, "big") if key in kept else None)


def test_expiry_and_a_later_put_of_a_key():
    clock = Clock()
    mem = FifoMemory(ttl=TTL, clock=clock)
    a = digest("m:1")
    assert mem.get(a) is None
    mem.put(a, b"first")
    mem.put(a, b"second")
    assert mem.get(a) == b"second"
    clock.now += TTL - 0.01
    assert mem.get(a) == b"second"
    clock.now += 0.02
    assert mem.get(a) is None
    mem.put(digest("m:2"), b"x")  # expired entries go as time passes
    assert len(mem) == 1 and mem.nbytes == 1


def test_a_value_larger_than_the_log_is_refused_and_costs_nothing():
    mem = FifoMemory(ttl=TTL, maxsize=4, max_bytes=64)
    mem.put(digest("a"), b"kept")
    assert mem.put(digest("b"), bytes(65)) is False
    assert mem.get(digest("a")) == b"kept" and mem.get(digest("b")) is None
    assert mem.put(digest("c"), bytes(64))  # the whole log: everything older goes
    assert mem.get(digest("a")) is None and mem.get(digest("c")) == bytes(64)


def test_bounds_must_fit_the_layout():
    for bad in ({"maxsize": 0}, {"max_bytes": 0}, {"max_bytes": 1 << 32}):
        with pytest.raises(ValueError):
            FifoMemory(ttl=TTL, **bad)


def test_keys_are_128_bit_digests_of_the_dedup_key():
    assert digest("m:1") != digest("m:2")
    assert 0 <= digest("e:oABC:1700000000:subscribe:") < 1 << 128
    assert digest("m:1") == digest("m:1")


def _resident_kib(region: mmap.mmap) -> int:
    """KiB of the mapping in RAM: pages marked present (bit 63) in /proc/self/pagemap."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(region)) // mmap.PAGESIZE
    pages = len(region) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(8 * start)
        words = memoryview(f.read(8 * pages)).cast("Q")
    return sum(1 for w in words if w >> 63) * mmap.PAGESIZE // 1024


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="needs Linux madvise")
def test_memory_no_entry_uses_is_handed_back():
    # Pages cost RSS once written; once the entries on them are gone they are returned,
    # so a quiet server does not keep a flood's high-water mark.
    clock = Clock()
    mem = FifoMemory(ttl=TTL, maxsize=1 << 16, max_bytes=16 << 20, clock=clock)
    log, ring = mem._log_region.map, mem._ring_region.map
    assert _resident_kib(log) == 0
    value = bytes(range(256)) * 2
    for i in range(20_000):  # ~10 MB of replies
        mem.put(digest(f"m:{i}"), value)
    assert _resident_kib(log) > 9_000 and _resident_kib(ring) > 500
    clock.now += TTL + 1
    for i in range(3):  # everything expired: the next put drops it all and hands it back
        mem.put(digest(f"late:{i}"), value)
    assert len(mem) == 3
    assert _resident_kib(log) < 64 and _resident_kib(ring) < 64
    # really freed, not just unmapped (a shared mapping would still hold the old bytes)
    assert log[5 << 20:(5 << 20) + 4096] == bytes(4096)
    assert all(mem.get(digest(f"late:{i}")) == value for i in range(3))


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="needs Linux madvise")
def test_memory_is_handed_back_around_entries_that_wrapped_the_ring():
    clock = Clock()
    mem = FifoMemory(ttl=TTL, maxsize=1 << 15, max_bytes=8 << 20, clock=clock)  # 1 MiB ring
    value = bytes(range(128))
    for i in range(30_000):
        mem.put(digest(f"old:{i}"), value)
    clock.now += 5
    for i in range(10_000):  # fills the ring to its end and goes on from its start
        mem.put(digest(f"new:{i}"), value)
    assert _resident_kib(mem._ring_region.map) >= 1000
    clock.now += TTL - 4  # the old ones expire, the new ones (now both ends of the ring) stay
    mem.put(digest("last"), value)
    assert len(mem) == 10_001
    assert _resident_kib(mem._ring_region.map) < 400
    assert _resident_kib(mem._log_region.map) < 1_500
    assert all(mem.get(digest(f"new:{i}")) == value for i in range(10_000))


def test_an_empty_value_is_kept_like_any_other():
    mem = FifoMemory(ttl=TTL, maxsize=8, max_bytes=1024)
    mem.put(digest("a"), b"")
    mem.put(digest("b"), b"x")
    assert mem.get(digest("a")) == b"" and mem.get(digest("b")) == b"x"


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="needs Linux madvise")
def test_memory_handed_back_while_the_log_wraps_never_held_a_live_entry():
    # 3 MB through a 1 MiB log: it wraps again and again, and memory is handed back each
    # MiB dropped; every entry still found must read back whole.
    mem = FifoMemory(ttl=TTL, maxsize=1 << 16, max_bytes=1 << 20)
    values = {digest(f"m:{i}"): i.to_bytes(4, "big") * 250 for i in range(3000)}
    for key, value in values.items():
        mem.put(key, value)
    found = {k: mem.get(k) for k in values}
    kept = [k for k, v in found.items() if v is not None]
    assert len(kept) >= 1000
    assert all(found[k] == values[k] for k in kept)
