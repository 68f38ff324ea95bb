"""The state wxhook shares: one interface, a memory and a Redis implementation; key names.

Every command of ours touches one key, so on a Redis Cluster a key lives where its whole
name hashes (pushes spread over every master) unless it carries a hash tag, `{...}`, which
Redis then hashes alone. Tags serve two ends: keeping keys that belong together in one slot
(same_slot), and keeping braces a sender chooses from deciding the slot (own_slot).
"""

from __future__ import annotations

from typing import Protocol


def same_slot(key: str, suffix: str) -> str:
    """A key that a Redis Cluster keeps in `key`'s slot: `key` itself is the hash tag.

    `key` keeps its own name (a key without braces hashes by its whole name), so a key
    written by an earlier version stays where that version reads it.
    """
    if "{" in key or "}" in key:
        raise ValueError(f"{key!r} has braces: its slot is not that of its name")
    return "{" + key + "}" + suffix


def own_slot(prefix: str, name: str) -> str:
    """prefix + name, in the slot of its whole name, never of braces inside `name`.

    A name with braces of its own (an EventKey "qrscene_{spring}") would otherwise hash by
    them alone, and every such key land in one slot: such a name is wrapped in a tag, which
    ends at its first "}" (names that differ before it still spread). Other names are kept
    as they are, so keys that instances of an earlier version share stay where they are.
    """
    return prefix + ("{" + name + "}" if "{" in name else name)


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
