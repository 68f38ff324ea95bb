"""Signatures against the published vectors (protocol page, V1); the shapes a signed query
may take; the nonce memory."""

import string
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.errors import FreshnessError, GuardError, SignatureError
from service.signature import check_fresh, check_signed, sign, verify
from tests.support import TOKEN, examples


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


@pytest.mark.parametrize(("token", "timestamp", "nonce", "expected"), [
    ("AAAAA", "1714036504", "1514711492", "f464b24fc39322e44b38aa78f5edd27bd1441696"),
    ("AAAAA", "1714037059", "486452656", "899cf89e464efb63f54ddac96b0a0a235f53aa78"),
    ("test", "1410685589", "test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"),
])
def test_published_queries_have_the_shapes_wechat_sends(token, timestamp, nonce, expected):
    assert check_signed(token, expected, timestamp, nonce, window=300,
                        now=float(timestamp)) == int(timestamp)


def respellings(token: str, timestamp: str, nonce: str) -> set[tuple[str, str]]:
    """Every (timestamp, nonce) that signs as this pair does under `token`: the sorted
    concatenation cut anew, the token one of the pieces, the others in either role."""
    whole = "".join(sorted((token, timestamp, nonce)))
    found = set()
    for i in range(len(whole) + 1):
        for j in range(i, len(whole) + 1):
            pieces = (whole[:i], whole[i:j], whole[j:])
            for k in range(3):
                if pieces[k] != token:
                    continue
                a, b = (p for n, p in enumerate(pieces) if n != k)
                for ts, nc in ((a, b), (b, a)):
                    if "".join(sorted((token, ts, nc))) == whole:
                        found.add((ts, nc))
    return found


def spelled_in(digits: str, text: str) -> str:
    """`text` with its ASCII digits written in another script's digits."""
    return text.translate(str.maketrans(string.digits, digits))


# Unicode digit sets int() reads as decimal: Arabic-Indic, Devanagari, full-width, bold maths.
_DIGITS = ["٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗"]
_TOKENS = st.text(string.ascii_letters + string.digits, min_size=3, max_size=32)
_NONCES = st.text(string.digits, min_size=1, max_size=10) | st.text(
    string.ascii_letters + string.digits, min_size=1, max_size=32)


def test_a_leading_zero_moves_between_nonce_and_timestamp_under_one_signature():
    # The forgery this guards against: the pair a captured push was signed for, cut anew.
    assert ("01714036504", "012") in respellings(TOKEN, "1714036504", "0120")
    assert sign(TOKEN, "01714036504", "012") == sign(TOKEN, "1714036504", "0120")
    assert int("01714036504") == 1714036504  # and int() reads the same second


@settings(max_examples=examples(150), deadline=None)
@given(token=_TOKENS, now=st.integers(1_400_000_000, 4_000_000_000),
       skew=st.integers(-300, 300), nonce=_NONCES)
@example(token=TOKEN, now=1714036504, skew=0, nonce="0120")  # "012" and "01714036504" too
@example(token="AAAAA", now=1714036504, skew=0, nonce="1514711492")
@example(token="9", now=1714036504, skew=0, nonce="00")
def test_a_signed_pair_cut_anew_is_refused(token, now, skew, nonce):
    ts = str(now + skew)
    signature = sign(token, ts, nonce)
    assert check_signed(token, signature, ts, nonce, window=300, now=now) == now + skew
    others = respellings(token, ts, nonce) - {(ts, nonce)}
    for t, n in others:
        assert sign(token, t, n) == signature  # a valid signature, so only shapes can refuse
        with pytest.raises(GuardError):
            check_signed(token, signature, t, n, window=300, now=now)


@settings(max_examples=examples(150), deadline=None)
@given(now=st.integers(1_400_000_000, 4_000_000_000),
       head=st.sampled_from(["", "0", "00", "+", " ", "\t", "\n", "+0", " +"]),
       tail=st.sampled_from(["", " ", "\n", "\t", "\r\n", "\x0b", "\u3000"]),
       cut=st.integers(1, 9), underscore=st.booleans(), digits=st.sampled_from(["", *_DIGITS]),
       keep=st.integers(0, 10))
def test_only_one_spelling_of_a_timestamp_counts(now, head, tail, cut, underscore, digits, keep):
    # Everything here is a spelling int() reads as the same second: one of them counts.
    body = str(now)
    if underscore:
        body = body[:cut] + "_" + body[cut:]
    if digits:  # from the `keep`th character on (int() reads scripts mixed, too)
        body = body[:keep] + spelled_in(digits, body[keep:])
    spelled = head + body + tail
    assert int(spelled) == now
    if spelled == str(now):
        return
    with pytest.raises(FreshnessError) as caught:
        check_signed(TOKEN, sign(TOKEN, spelled, "1514711492"), spelled, "1514711492",
                     window=300, now=now)
    assert caught.value.status == 400 and caught.value.reason == "timestamp"


@pytest.mark.parametrize("ts", ["", "0", "-1", "1e9", "1.0", "0x65f0a1b8", "1" * 13, "١", "²",
                                "1714036504\n", "\u200b1714036504", "1714036504\u00a0",
                                "1714036٥٠٤", "171403650４"])
def test_timestamps_that_are_not_canonical_are_400(ts):
    with pytest.raises(FreshnessError) as caught:
        check_fresh(ts, window=300, now=1714036504)
    assert caught.value.status == 400


@pytest.mark.parametrize("nonce", ["", "a" * 33, "12 34", " 1", "1\n", "+1", "-1", "١٢٣",
                                   "１２３", "a_b", "a-b", "12\x0134", "ß", "é", "1.5", "%31"])
def test_nonces_wechat_would_not_send_are_400(nonce):
    ts = "1714036504"
    with pytest.raises(GuardError) as caught:
        check_signed(TOKEN, sign(TOKEN, ts, nonce), ts, nonce, window=300, now=float(ts))
    assert caught.value.status == 400 and caught.value.reason == "nonce"


@pytest.mark.parametrize("nonce", ["1514711492", "486452656", "test", "0123", "a" * 32, "Z9"])
def test_nonces_of_wechat_s_shape_pass(nonce):
    ts = "1714036504"
    assert check_signed(TOKEN, sign(TOKEN, ts, nonce), ts, nonce, window=300, now=float(ts))


@pytest.mark.parametrize("mangle", [lambda s: s[:-1], lambda s: s + "0", lambda s: " " + s[1:],
                                    lambda s: s[:-1] + "g", lambda s: s + "\n",
                                    lambda s: s[:-1] + "\u0661", lambda s: s[:-1] + "\uff10"])
def test_a_signature_that_is_not_40_hex_digits_is_refused(mangle):
    good = sign("AAAAA", "1714036504", "1514711492")
    verify(("AAAAA", "1714036504", "1514711492"), good.upper())
    for what in ("signature", "msg_signature"):
        with pytest.raises(SignatureError) as caught:
            verify(("AAAAA", "1714036504", "1514711492"), mangle(good), what=what)
        assert caught.value.reason == what and "40 hex" in str(caught.value)


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
