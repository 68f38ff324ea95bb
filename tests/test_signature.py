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


def test_freshness_window():
    now = time.time()
    assert check_fresh(str(int(now) - 299), window=300, now=now) == int(now) - 299
    with pytest.raises(FreshnessError):
        check_fresh(str(int(now) - 3600), window=300, now=now)
    with pytest.raises(FreshnessError):
        check_fresh(str(int(now) + 400), window=300, now=now)
    with pytest.raises(FreshnessError):
        check_fresh("12ab", window=300, now=now)
