"""Per-follower state (`await ctx.state()`): a small JSON object per account and follower,
kept in the Store so every instance sees it.

It is read only when a handler asks for it and written at most once per push, after the
handlers, before the reply goes out (so the follower's next message sees it). Two pushes of
one follower that run at the same time both read the same state; the write is a
compare-and-set against what was read, so the first to finish is kept and the other's
change is refused and logged (`state_conflict`), never silently merged or overwritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

STATE_LIMIT = 4096  # bytes of JSON: Redis holds one per follower who has any state


class StateStore(Protocol):
    """What state needs of the Store (service.store.base.Store has it all)."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        """Store `value`; with nx only when absent. True when written."""

    async def delete_if(self, key: str, expected: bytes) -> bool:
        """Remove the key only while it still holds `expected`."""

    async def replace_if(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        """Set `value` only while the key still holds `expected`."""


class Warner(Protocol):
    """A rate-limited warning log (service.loglimit.LimitedLog): a follower can make a
    handler's state too big on every push."""

    def warning(self, key: str, event: str, **fields: Any) -> None:
        """Log `event` unless `key` has had its lines this second."""


@dataclass(slots=True)
class Loaded:
    """One push's state: the dict handlers change, and what it was read as."""

    data: dict[str, Any]
    stored: bytes | None   # the bytes in the store, what the compare-and-set expects
    snapshot: bytes        # `data` as read, re-encoded: the write is skipped when unchanged


def encode(data: dict[str, Any]) -> bytes:
    """Compact JSON; raises TypeError/ValueError for what JSON cannot hold (NaN included)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


class States:
    """The follower states of one account: `namespace` names the account."""

    def __init__(self, store: StateStore, *, namespace: str, ttl: float, log: Warner,
                 limit: int = STATE_LIMIT) -> None:
        self.store = store
        self.namespace = namespace
        self.ttl = ttl
        self.limited = log
        self.limit = limit

    def key(self, openid: str) -> str:
        """The store key of a follower's state."""
        return f"{self.namespace}state:{openid}"

    async def load(self, openid: str) -> Loaded:
        """The follower's state ({} when none, expired or unreadable)."""
        stored = await self.store.get(self.key(openid))
        data: dict[str, Any] = {}
        if stored is not None:
            try:
                found = json.loads(stored)
            except ValueError:
                found = None
            if isinstance(found, dict):
                data = found
            else:  # not ours (another version, a hand edit): start over, replace it on write
                self.limited.warning("state_unreadable", "state_unreadable", bytes=len(stored))
        return Loaded(data, stored, encode(data))

    async def save(self, openid: str, loaded: Loaded, *, who: dict[str, Any]) -> str:
        """Write the state if it changed; the outcome: unchanged, saved, conflict, refused
        (too large, or not JSON) or failed (the store raised). Never raises."""
        try:
            now = encode(loaded.data)
        except (TypeError, ValueError) as exc:
            self.limited.warning("state_not_json", "state_not_json", **who, error=str(exc)[:200],
                             action="state not saved: keep only str, int, float, bool, None, "
                                    "lists and dicts with str keys")
            return "refused"
        if now == loaded.snapshot:
            return "unchanged"
        if len(now) > self.limit:
            self.limited.warning("state_too_large", "state_too_large", **who, bytes=len(now),
                             limit=self.limit, action="state not saved; the previous one stays")
            return "refused"
        key, before = self.key(openid), loaded.stored
        try:
            if not loaded.data:  # emptied: nothing to keep
                written = before is None or await self.store.delete_if(key, before)
            elif before is None:
                written = await self.store.set(key, now, ttl=self.ttl, nx=True)
            else:
                written = await self.store.replace_if(key, before, now, ttl=self.ttl)
        except Exception as exc:  # noqa: BLE001 - the reply still goes out; say why
            self.limited.warning("state_failed", "state_save_failed", **who,
                             error=f"{type(exc).__name__}: {exc}"[:200])
            return "failed"
        if not written:
            self.limited.warning("state_conflict", "state_conflict", **who,
                             action="another push of this follower changed the state first; "
                                    "this push's change was not saved")
            return "conflict"
        return "saved"
