"""Fixed-window limits per client address and overall, on a virtual clock."""

from __future__ import annotations

import pytest

from wxhook.server.ratelimit import WindowLimit, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_each_client_has_its_own_window():
    clock = Clock()
    limit = WindowLimit(per_client=2, total=100, window=60, clock=clock)
    assert [limit.allow("203.0.113.9") for _ in range(4)] == [True, True, False, False]
    assert limit.allow("198.51.100.7")
    clock.now += 59.9
    assert not limit.allow("203.0.113.9")           # refusals did not extend the window
    clock.now += 0.1
    assert [limit.allow("203.0.113.9") for _ in range(3)] == [True, True, False]


def test_the_total_bounds_every_client_together():
    clock = Clock()
    limit = WindowLimit(per_client=5, total=3, window=60, clock=clock)
    assert [limit.allow(f"203.0.113.{i}") for i in range(5)] == [True, True, True, False, False]
    clock.now += 60
    assert limit.allow("203.0.113.4")


def test_refused_calls_are_not_counted():
    clock = Clock()
    limit = WindowLimit(per_client=1, total=2, window=60, clock=clock)
    assert limit.allow("a") and not limit.allow("a") and not limit.allow("a")
    assert limit.allow("b")                         # a's refusals used none of the total


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.9", "203.0.113.9"),
    ("::ffff:203.0.113.9", "203.0.113.9"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"),   # the same /64: the same client
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("testclient", "testclient"),
])
def test_an_ipv6_client_is_its_64(address, key):
    assert client_key(address) == key


def test_retry_after_is_when_the_window_that_refuses_ends():
    clock = Clock()
    limit = WindowLimit(per_client=1, total=2, window=60, clock=clock)
    assert limit.retry_after("a") == 0                # nothing counted yet
    assert limit.allow("a")
    clock.now += 10
    assert limit.retry_after("a") == 50               # its own window: 10 s of 60 gone
    assert limit.retry_after("b") == 0
    assert limit.allow("b")                            # everyone's window, started at 500
    clock.now += 5
    assert limit.retry_after("c") == 45 and not limit.allow("c")
    clock.now += 45
    assert limit.retry_after("a") == 0 and limit.allow("a")
