"""The state wxhook shares: one interface, a memory and a Redis implementation."""

from __future__ import annotations

from typing import Protocol


class Store(Protocol):
    """Key/value with TTLs plus hashes; every key is already namespaced by the caller."""

    shared: bool  # True when other processes see the same state (Redis)

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        """Store `value`; with nx only when absent. True when written."""

    async def delete(self, key: str) -> None:
        """Remove the key."""

    async def delete_if(self, key: str, expected: bytes) -> bool:
        """Atomically remove the key only while it still holds `expected`."""

    async def replace_if(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        """Atomically set `value` (with a new TTL) only while the key still holds `expected`."""

    async def hgetall(self, key: str) -> dict[str, str]:
        """All fields of a hash ({} when absent)."""

    async def hset(self, key: str, mapping: dict[str, str]) -> None:
        """Set fields of a hash (no TTL: profiles are kept)."""

    async def ping(self) -> None:
        """Raise when the store cannot be reached."""

    async def aclose(self) -> None:
        """Release connections."""
