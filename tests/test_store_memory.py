"""The memory store's own guarantees: TTLs, nx, compare-and-delete, sweeping, the bound."""

from wxhook.server.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ttl_nx_and_overwrite():
    clock = Clock()
    s = MemoryStore(clock=clock)
    assert await s.set("a", b"1", ttl=10, nx=True)
    assert not await s.set("a", b"2", ttl=10, nx=True)
    assert await s.get("a") == b"1"
    assert await s.set("a", b"3", ttl=30)  # overwrite extends the life
    clock.now += 20
    assert await s.get("a") == b"3"
    clock.now += 11
    assert await s.get("a") is None
    assert await s.set("a", b"4", ttl=5, nx=True)  # an expired key can be claimed again


async def test_delete_if_compares_value_and_life():
    clock = Clock()
    s = MemoryStore(clock=clock)
    await s.set("k", b"mine", ttl=5)
    assert not await s.delete_if("k", b"theirs")
    assert await s.delete_if("k", b"mine")
    assert await s.get("k") is None
    await s.set("k", b"mine", ttl=5)
    clock.now += 6
    assert not await s.delete_if("k", b"mine")


async def test_expired_keys_are_swept_not_kept():
    clock = Clock()
    s = MemoryStore(clock=clock)
    for i in range(1000):
        await s.set(f"n{i}", b"x", ttl=60)
    await s.set("forever", b"t")
    clock.now += 61.5
    await s.set("trigger", b"y", ttl=60)  # any write sweeps the seconds that have passed
    assert s.size == 2 and await s.get("forever") == b"t"


async def test_bound_drops_least_recently_used_and_never_untimed_keys():
    clock = Clock()
    s = MemoryStore(maxsize=100, clock=clock)
    await s.set("token", b"t")
    for i in range(100):
        await s.set(f"old{i}", b"x", ttl=10)
    for i in range(50):
        await s.set(f"new{i}", b"x", ttl=600)
    assert s.size == 101  # the bound, plus the key without a TTL
    assert await s.get("token") == b"t"
    assert all([await s.get(f"new{i}") == b"x" for i in range(50)])
    assert not any([await s.get(f"old{i}") for i in range(50)])


async def test_replace_if_compares_value_and_life():
    clock = Clock()
    s = MemoryStore(clock=clock)
    await s.set("k", b"claim-a", ttl=2)
    assert not await s.replace_if("k", b"claim-b", b"reply-b", ttl=60)
    assert await s.replace_if("k", b"claim-a", b"claim-a", ttl=2)  # renewed
    clock.now += 1.5
    assert await s.replace_if("k", b"claim-a", b"reply-a", ttl=60)
    clock.now += 30
    assert await s.get("k") == b"reply-a"
    await s.set("gone", b"claim", ttl=1)
    clock.now += 1
    assert not await s.replace_if("gone", b"claim", b"late", ttl=60)
    assert await s.get("gone") is None


async def test_hashes():
    s = MemoryStore()
    await s.hset("h", {"a": "1"})
    await s.hset("h", {"b": "2"})
    assert await s.hgetall("h") == {"a": "1", "b": "2"}
    assert await s.hgetall("missing") == {}
