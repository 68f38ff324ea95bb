"""Fixed-window limits on a costly request: per client address and overall, in this process.

An OAuth callback with a fresh signed state costs a call to WeChat with the app secret,
and anyone can get a signed state from /oauth/login. The limits hold in one process: with
N instances the overall budget is N times the setting. A per-address bound is weak against
IPv6, where a client has a whole /64: the /64 is the client there.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from cachetools import TTLCache

MAX_CLIENTS = 100_000  # addresses remembered at once; beyond, the longest idle are forgotten


def client_key(address: str) -> str:
    """The unit one limit applies to: an IPv4 address, an IPv6 /64, else the text as is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a unix socket path, a test client's name
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:203.0.113.7 is 203.0.113.7
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class WindowLimit:
    """At most `per_client` calls per client and `total` in all, in each `window` seconds."""

    def __init__(self, *, per_client: int, total: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client, self.total, self.window, self.clock = per_client, total, window, clock
        # client -> (start of its window, calls in it); a client idle for a window drops out.
        self._clients: TTLCache[str, tuple[float, int]] = TTLCache(MAX_CLIENTS, ttl=window,
                                                                   timer=clock)
        self._all: tuple[float, int] = (clock(), 0)

    def allow(self, address: str) -> bool:
        """Count one call from `address`; False (and not counted) when over either limit."""
        now, key = self.clock(), client_key(address)
        mine = self._fresh(self._clients.get(key), now)
        everyone = self._fresh(self._all, now)
        if mine[1] >= self.per_client or everyone[1] >= self.total:
            return False
        self._clients[key] = (mine[0], mine[1] + 1)
        self._all = (everyone[0], everyone[1] + 1)
        return True

    def retry_after(self, address: str) -> float:
        """Seconds until a call from `address` would be allowed again; 0: now."""
        now = self.clock()
        wait = 0.0
        mine = self._fresh(self._clients.get(client_key(address)), now)
        if mine[1] >= self.per_client:
            wait = mine[0] + self.window - now
        everyone = self._fresh(self._all, now)
        if everyone[1] >= self.total:
            wait = max(wait, everyone[0] + self.window - now)
        return wait

    def _fresh(self, counted: tuple[float, int] | None, now: float) -> tuple[float, int]:
        if counted is None or now - counted[0] >= self.window:
            return now, 0
        return counted
