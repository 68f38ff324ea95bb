"""Signatures against the published vectors (protocol page, V1)."""

import time

import pytest

from service.errors import FreshnessError, SignatureError
from service.signature import check_fresh, sign, verify


@pytest.mark.parametrize(("token", "timestamp", "nonce", "expected"), [
    ("AAAAA", "1714036504", "1514711492", "f464b24fc39322e44b38aa78f5edd27bd1441696"),
    ("AAAAA", "1714037059", "486452656", "899cf89e464efb63f54ddac96b0a0a235f53aa78"),
    ("test", "1410685589", "test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"),
])
def test_published_signatures(token, timestamp, nonce, expected):
    assert sign(token, timestamp, nonce) == expected
    verify((token, timestamp, nonce), expected)
    verify((token, timestamp, nonce), expected.upper())


def test_wrong_or_missing_signature_is_refused():
    with pytest.raises(SignatureError):
        verify(("AAAAA", "1714036504", "1514711492"), "f464b24fc39322e44b38aa78f5edd27bd1441697")
    with pytest.raises(SignatureError):
        verify(("AAAAA", "1714036504", "1514711492"), "")


@pytest.mark.parametrize("given", ["é" * 40, "f464b24fc39322e44b38aa78f5edd27bd144169\u0661",
                                   "İ" * 40, "\udcff" * 40, "ß"])
def test_a_non_ascii_signature_is_refused_not_a_type_error(given):
    with pytest.raises(SignatureError):
        verify(("AAAAA", "1714036504", "1514711492"), given)


def test_freshness_window():
    now = time.time()
    assert check_fresh(str(int(now) - 299), window=300, now=now) == int(now) - 299
    with pytest.raises(FreshnessError):
        check_fresh(str(int(now) - 3600), window=300, now=now)
    with pytest.raises(FreshnessError):
        check_fresh(str(int(now) + 400), window=300, now=now)
    with pytest.raises(FreshnessError):
        check_fresh("12ab", window=300, now=now)


async def test_local_nonces_allow_retries_refuse_replays_and_forget_old_seconds():
    from service.signature import LocalNonces

    now = [1_000_000.0]
    n = LocalNonces(window=300, clock=lambda: now[0])
    assert await n.first_seen(1_000_000, "42", b"body-a") == 1_000_000
    now[0] += 5
    assert await n.first_seen(1_000_000, "42", b"body-a") == 1_000_000  # a retry: first arrival
    assert await n.first_seen(1_000_000, "42", b"body-b") is None       # replayed, other body
    assert await n.first_seen(1_000_001, "42", b"body-b") == 1_000_005  # another second
    now[0] += 297  # 1_000_000 is out of the window now: its second goes
    assert await n.first_seen(1_000_300, "x", b"y") is not None
    assert 1_000_000 not in n._by_ts and 1_000_001 in n._by_ts


async def test_local_nonces_are_bounded_and_refuse_the_seconds_they_forgot():
    from service.signature import LocalNonces

    n = LocalNonces(window=300, maxsize=10, clock=lambda: 1_000_000.0)
    for i in range(10):
        assert await n.first_seen(999_990, f"old{i}", b"d") is not None
    assert await n.first_seen(999_999, "new", b"d") is not None
    assert 999_990 not in n._by_ts and n._by_ts[999_999].used == 1
    # Forgotten, so no longer told apart from a replay: refused, never taken for new.
    assert await n.first_seen(999_990, "old0", b"d") is None
    assert await n.first_seen(999_989, "older", b"d") is None


async def test_local_nonces_tell_apart_nonces_that_read_as_the_same_number():
    from service.signature import LocalNonces

    n = LocalNonces(window=300, clock=lambda: 1_000_000.0)
    spellings = ("123", "0123", "00123", "1" * 30, "12a", "١٢٣", "１２３", "²")
    for nonce in spellings:
        assert await n.first_seen(1_000_000, nonce, b"body-" + nonce.encode()) is not None
    for nonce in spellings:
        assert await n.first_seen(1_000_000, nonce, b"body-" + nonce.encode()) is not None
        assert await n.first_seen(1_000_000, nonce, b"other body") is None


async def test_local_nonces_keep_every_entry_as_their_tables_grow():
    from service.signature import LocalNonces

    now = [1_000_000.0]
    n = LocalNonces(window=300, clock=lambda: now[0])
    nonces = [str(1_000_000_000 + i) for i in range(3000)] + [f"n{i}" for i in range(3000)]
    digests = [i.to_bytes(8, "big") for i in range(len(nonces))]  # 0 among them
    for nonce, digest in zip(nonces, digests, strict=True):
        assert await n.first_seen(1_000_000, nonce, digest) is not None
    now[0] += 5
    for nonce, digest in zip(nonces, digests, strict=True):  # first arrivals survive growing
        assert await n.first_seen(1_000_000, nonce, digest) == 1_000_000
        assert await n.first_seen(1_000_000, nonce, b"\xff" * 8) is None
    assert n._count == len(nonces) == n._by_ts[1_000_000].used


async def test_shared_nonces_live_until_the_window_closes_and_keep_the_first_arrival():
    from service.signature import SharedNonces
    from service.store.memory import MemoryStore

    now = [1_000_000.0]
    store = MemoryStore(clock=lambda: now[0])
    n = SharedNonces(store, namespace="t:", window=300, clock=lambda: now[0])
    assert await n.first_seen(999_990, "7", b"a" * 8) == 1_000_000
    now[0] += 40
    assert await n.first_seen(999_990, "7", b"b" * 8) is None
    assert await n.first_seen(999_990, "7", b"a" * 8) == 1_000_000
    now[0] += 300  # past 999_990 + window: the key is gone with the window
    assert await store.get("t:nonce:999990:7") is None
