"""Signatures, the timestamp window, and the nonce memory (guard step 1)."""

from __future__ import annotations

import hashlib
import hmac
import time

from .errors import FreshnessError, SignatureError


def sign(*parts: str) -> str:
    """WeChat's signature: SHA-1 hex of the parts sorted and concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def verify(expected_parts: tuple[str, ...], given: str, *, what: str = "signature") -> None:
    """Raise SignatureError unless `given` is the signature of the parts (constant time)."""
    if not given or not hmac.compare_digest(sign(*expected_parts), given.lower()):
        err = SignatureError(f"{what} does not match")
        err.reason = what
        raise err


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
