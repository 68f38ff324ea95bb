"""Hostile and broken input: every push is answered 4xx (or 200) in time, never a 5xx or a hang.

Plaintext mode signs only token+timestamp+nonce, so an attacker who captured one signed query
can attach any body: every hostile body below is therefore sent with a VALID signature.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from service.app import create_app
from service.crypto import MessageCrypto
from service.signature import sign
from service.store.memory import MemoryStore
from service.tools.simulate import Push, decode_reply, push_xml, sign_push
from tests.conftest import OPENID
from tests.support import AES_KEY, SANDBOX_APP_ID, TOKEN
from tests.test_signature import respellings, spelled_in
from tests.virtual_time import run_virtual

SECRET_MARKER = "TOP-SECRET-" + secrets.token_hex(8)


def signed(body: bytes, *, ts: int | None = None, nonce: str | None = None) -> Push:
    """A body with a valid plaintext-mode signature (what a captured query allows)."""
    return sign_push(body, token=TOKEN, openid=OPENID, timestamp=ts, nonce=nonce)


def encrypted(encrypt: str, *, ts: int | None = None) -> Push:
    """A safe-mode push whose msg_signature is valid for whatever `encrypt` holds."""
    t = str(int(time.time()) if ts is None else ts)
    nonce = str(secrets.randbelow(10**10))
    params = {"signature": sign(TOKEN, t, nonce), "timestamp": t, "nonce": nonce,
              "openid": OPENID, "encrypt_type": "aes",
              "msg_signature": sign(TOKEN, t, nonce, encrypt)}
    body = f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{encrypt}]]>" \
           "</Encrypt></xml>"
    return Push(params, body.encode())


async def post(client: httpx.AsyncClient, push: Push, body: Any = None) -> httpx.Response:
    return await client.post("/wechat", params=push.params,
                             content=push.body if body is None else body)


async def assert_still_serving(client: httpx.AsyncClient, make_push: Callable[..., Push]) -> None:
    good = make_push("subscribe")
    r = await post(client, good)
    assert r.status_code == 200
    assert decode_reply(r.content, crypto=None)["Content"] == "Welcome, 刺猬宝宝!"


# -- entities and DTDs --------------------------------------------------------------------------

def _xxe(path: str, *, encoding: str = "utf-8") -> bytes:
    decl = f'<?xml version="1.0" encoding="{encoding}"?>' if encoding != "utf-8" else ""
    doc = (f'{decl}<!DOCTYPE xml [<!ENTITY leak SYSTEM "file://{path}">]>'
           "<xml><ToUserName><![CDATA[gh_x]]></ToUserName>"
           f"<FromUserName><![CDATA[{OPENID}]]></FromUserName><CreateTime>1</CreateTime>"
           "<MsgType><![CDATA[text]]></MsgType><Content>&leak;</Content>"
           "<MsgId>1</MsgId></xml>")
    return doc.encode(encoding)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
               for i in range(1, 10))
    + b"]><xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>"
      b"<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&lol9;</Content></xml>"
)


@pytest.fixture
def secret_file(tmp_path: Any) -> str:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET_MARKER)
    return str(path)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be"])
async def test_xxe_reading_a_local_file_is_refused_and_nothing_leaks(
        client, make_push, secret_file, capsys, encoding):
    # UTF-16 hides "<!DOCTYPE" from a byte-level check: the parsed tree is checked too.
    r = await post(client, signed(_xxe(secret_file, encoding=encoding)))
    assert r.status_code == 400
    assert SECRET_MARKER not in r.text
    await assert_still_serving(client, make_push)
    assert SECRET_MARKER not in capsys.readouterr().out


async def test_xxe_inside_the_ciphertext_is_refused(client, crypto, secret_file, capsys):
    r = await post(client, encrypted(crypto.encrypt(_xxe(secret_file))))
    assert r.status_code == 400
    assert SECRET_MARKER not in r.text and SECRET_MARKER not in capsys.readouterr().out


async def test_billion_laughs_is_refused_before_any_parser_sees_it(client, make_push):
    r = await post(client, signed(BILLION_LAUGHS))
    assert r.status_code == 400
    # Refused by the check on the document's first markup, so no entity is ever expanded
    # (libxml2 would refuse it too, fast, but only after starting to expand it).
    assert r.content in (b"xml: the document must start with the <xml> root (no DTD, no prolog)",
                         b"xml: DTDs and entities are not accepted")
    await assert_still_serving(client, make_push)


@pytest.mark.parametrize("body", [
    b'<!DOCTYPE xml><xml><ToUserName>a</ToUserName></xml>',
    b'<!DOCTYPE xml SYSTEM "http://169.254.169.254/latest/meta-data/"><xml/>',
    (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd">%p;]>'
     b'<xml/>'),
    (b'<xml xmlns:xi="http://www.w3.org/2001/XInclude"><ToUserName>a</ToUserName>'
     b'<FromUserName><xi:include parse="text" href="/etc/passwd"/></FromUserName>'
     b'<CreateTime>1</CreateTime><MsgType>text</MsgType></xml>'),
], ids=["bare-dtd", "external-dtd", "parameter-entity", "xinclude"])
async def test_dtds_and_includes_never_reach_a_handler(client, body):
    r = await post(client, signed(body))
    assert 400 <= r.status_code < 500
    assert b"root:" not in r.content


# -- external entities and DTDs in every encoding --------------------------------------------------
#
# libxml2 opens an external subset or parameter entity even with load_dtd=False: /dev/zero
# would pin the worker for good, a FIFO block it. Each attack goes out in every encoding an
# attacker can choose, each answer must come well under a second (the request runs in a
# thread of its own, so a frozen parser fails the test instead of hanging the suite).

_FIELDS = ("<ToUserName>gh_x</ToUserName><FromUserName>o1</FromUserName>"
           "<CreateTime>1</CreateTime><MsgType>text</MsgType>")


def _attacks(target: str) -> dict[str, str]:
    return {
        "parameter-entity": f'<!DOCTYPE xml [<!ENTITY % p SYSTEM "{target}"> %p;]><xml/>',
        "external-subset": f'<!DOCTYPE xml SYSTEM "{target}"><xml>{_FIELDS}</xml>',
        "public-subset": f'<!DOCTYPE xml PUBLIC "-//x//y" "{target}"><xml>{_FIELDS}</xml>',
        "external-entity": (f'<!DOCTYPE xml [<!ENTITY e SYSTEM "{target}">]>'
                            f"<xml>{_FIELDS}<Content>&e;</Content></xml>"),
        "xinclude": ('<xml xmlns:xi="http://www.w3.org/2001/XInclude">'
                     f'{_FIELDS}<Content><xi:include parse="text" href="{target}"/></Content>'
                     "</xml>"),
        "xinclude-sibling": ('<xml xmlns:xi="http://www.w3.org/2001/XInclude">'
                             f'{_FIELDS}<xi:include parse="text" href="{target}"/></xml>'),
    }


def _in(encoding: str, doc: str) -> bytes:
    """`doc` as an attacker would send it in `encoding` (a declaration where one fits)."""
    decl = '<?xml version="1.0" encoding="{}"?>'
    if encoding == "utf-8":
        return doc.encode()
    if encoding == "utf-8-bom":
        return codecs.BOM_UTF8 + doc.encode()
    if encoding == "gbk":
        return (decl.format("GBK") + doc).encode("gbk")
    if encoding == "utf-32-bom":
        return codecs.BOM_UTF32_LE + (decl.format("UTF-32") + doc).encode("utf-32-le")
    codec, _, bom = encoding.partition("+")  # utf-16-le+bom, utf-16-be
    mark = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}[codec]
    return (mark if bom else b"") + (decl.format("UTF-16") + doc).encode(codec)


ENCODINGS = ["utf-8", "utf-8-bom", "utf-16-le+bom", "utf-16-be+bom", "utf-16-le", "utf-16-be",
             "gbk", "utf-32-bom"]


@pytest.fixture(scope="module")
def fifo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FIFO nobody writes to: opening it for reading blocks until someone does."""
    path = tmp_path_factory.mktemp("fifo") / "pipe"
    os.mkfifo(path)
    yield str(path)
    # Release a reader a broken parser may have left blocked on it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader, as it should be
        return
    os.close(fd)


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[str, list[Any]]]:
    """A TCP port that accepts and never answers, and the connections it got."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    got: list[Any] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                got.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/x.dtd", got
    done.set()
    thread.join()
    for conn in got:
        conn.close()
    sock.close()


def _post_within(app: Any, push: Push, seconds: float) -> httpx.Response:
    """POST from a thread of its own: a parser that never returns fails the test instead
    of freezing the suite (the thread is a daemon, left behind)."""
    out: list[httpx.Response] = []

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as c:
            out.append(await post(c, push))

    thread = threading.Thread(target=asyncio.run, args=(go(),), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert out, f"no answer within {seconds} s: the parser is reading the target"
    assert time.monotonic() - started < seconds
    return out[0]


HANG = 5.0  # s: a parser reading /dev/zero or a FIFO never answers; a correct one takes ms


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "fifo", "http", "file"])
async def test_entities_dtds_and_includes_touch_nothing_in_any_encoding(
        app, client, make_push, fifo, listener, secret_file, target, encoding):
    url = {"/dev/zero": "file:///dev/zero", "/dev/urandom": "file:///dev/urandom",
           "fifo": f"file://{fifo}", "http": listener[0], "file": f"file://{secret_file}"}
    for name, doc in _attacks(url[target]).items():
        r = _post_within(app, signed(_in(encoding, doc)), HANG)
        assert 400 <= r.status_code < 500, (name, r.status_code)
        # A fixed answer: libxml2's words (which name local files) go to the log only.
        assert r.content in (b"xml: malformed XML", b"xml: DTDs and entities are not accepted",
                             b"xml: namespaces (XInclude) are not accepted",
                             b"xml: the document must start with the <xml> root "
                             b"(no DTD, no prolog)"), (name, r.content)
    assert not listener[1], "the parser connected to the network"
    await assert_still_serving(client, make_push)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_document_in_any_encoding_still_parses(encoding):
    # The decoding that keeps DTDs out keeps ordinary documents in, whatever their encoding.
    from service.xmldoc import parse_fields

    doc = f"<xml>{_FIELDS}<Content><![CDATA[你好 <!DOCTYPE> ]]]]></Content></xml>"
    fields = parse_fields(_in(encoding, doc))
    assert fields["Content"] == "你好 <!DOCTYPE> ]]" and fields["FromUserName"] == "o1"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_fast_reader_never_takes_a_hostile_document(encoding, secret_file):
    # The regular-expression reader only takes flat UTF-8 <xml> documents: every attack
    # falls through to the decoding parser.
    from service.xmldoc import flat_fields

    for doc in _attacks(f"file://{secret_file}").values():
        assert flat_fields(_in(encoding, doc)) is None


@pytest.mark.slow
def test_a_real_server_survives_dev_zero_in_utf16_and_answers_the_next_push(tmp_path):
    from tests.support import server_process

    doc = '<!DOCTYPE xml [<!ENTITY % p SYSTEM "file:///dev/zero"> %p;]><xml/>'
    with server_process("http://127.0.0.1:9", WXHOOK_MESSAGE_MODE="compat") as base:
        for body in (codecs.BOM_UTF16_LE + doc.encode("utf-16-le"), doc.encode("utf-16-be")):
            push = signed(body)
            started = time.monotonic()
            r = httpx.post(f"{base}/wechat", params=push.params, content=push.body, timeout=10)
            # Inside WeChat's window; a parser reading /dev/zero would never answer.
            assert 400 <= r.status_code < 500 and time.monotonic() - started < 5.0
            assert b"zero" not in r.content
        good = signed(push_xml("text", openid=OPENID, text="help"))
        r = httpx.post(f"{base}/wechat", params=good.params, content=good.body, timeout=3)
        assert r.status_code == 200 and b"help" in r.content


# -- size, streaming and stalls -----------------------------------------------------------------

async def test_five_megabytes_with_content_length_is_413(client, make_push):
    r = await post(client, signed(b"<xml>" + b"x" * (5 * 1024 * 1024) + b"</xml>"))
    assert r.status_code == 413
    await assert_still_serving(client, make_push)


async def test_chunked_body_without_content_length_stops_at_the_limit(client, make_push, settings):
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(5 * 16):  # 5 MB in 64 KB chunks, no Content-Length
            sent += 1
            yield b"<" * 65536

    push = signed(b"")
    request = client.build_request("POST", "/wechat", params=push.params, content=chunks())
    assert "content-length" not in request.headers
    r = await client.send(request)
    assert r.status_code == 413
    # Streamed limit: reading stopped just past max_body, not at the end of the 5 MB.
    assert sent * 65536 <= settings.max_body + 2 * 65536
    await assert_still_serving(client, make_push)


@pytest.mark.parametrize("value", [b"abc", b"-1", b"9" * 40, b"1e9"])
async def test_absurd_content_length_headers_are_4xx(app, value):
    push = signed(b"<xml/>")
    status, _ = await raw_asgi(app, push.params, [b"<xml/>"],
                               headers=[(b"content-length", value)])
    assert status in (400, 413)


async def raw_asgi(app: Any, params: dict[str, str], chunks: list[bytes], *,
                   headers: list[tuple[bytes, bytes]] | None = None,
                   stall: bool = False, disconnect: bool = False) -> tuple[int, bytes]:
    """Drive the ASGI app directly: headers and chunking exactly as given."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/wechat", "raw_path": b"/wechat",
             "root_path": "", "query_string": urlencode(params).encode(),
             "headers": [(b"host", b"testserver"), *(headers or [])],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    queue = list(chunks)
    out: dict[str, Any] = {"status": None, "body": b""}

    async def receive() -> dict[str, Any]:
        if queue:
            chunk = queue.pop(0)
            more = bool(queue) or stall or disconnect
            return {"type": "http.request", "body": chunk, "more_body": more}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # a sender that stopped sending
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await asyncio.wait_for(app(scope, receive, send), 10)
    return out["status"], out["body"]


def test_a_sender_that_stalls_mid_body_gets_an_answer_by_the_deadline(make_settings):
    push = signed(push_xml("text", openid=OPENID))

    async def main() -> None:
        # Nothing upstream is reached: the body never arrives, so no handler runs.
        async with httpx.AsyncClient() as http:
            app = create_app(make_settings(WXHOOK_DEADLINE="0.5"), http=http,
                             store=MemoryStore())
            status, _ = await raw_asgi(app, push.params, [push.body[:20]], stall=True,
                                       headers=[(b"content-length", str(len(push.body)).encode())])
        assert status == 408
        # Virtual time: the read was given up at the deadline, not when the sender resumed.
        assert asyncio.get_running_loop().time() == pytest.approx(0.5, abs=0.01)

    run_virtual(main)


async def test_a_sender_that_disconnects_mid_body_is_not_a_5xx(app):
    push = signed(push_xml("text", openid=OPENID))
    status, _ = await raw_asgi(app, push.params, [push.body[:20]], disconnect=True)
    assert status is not None and status < 500


# -- broken bytes -------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"",
    b"\x00" * 64,
    b"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDA",  # truncated
    b"<xml><ToUserName>\xff\xfe\xfa</ToUserName></xml>",  # not UTF-8
    b'<?xml version="1.0" encoding="x-unknown"?><xml/>',
    b"<xml><ToUserName>a\x01\x02\x1b</ToUserName></xml>",  # control characters
    b"<xml><Content><![CDATA[a\x00b]]></Content></xml>",
    b"<xml>" + b"<a>" * 400 + b"</a>" * 400 + b"</xml>",  # deeper than libxml2 allows
    b"<notxml/>",
    (b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>"
     b"<CreateTime>\xc2\xb2</CreateTime><MsgType>text</MsgType></xml>"),  # "²".isdigit()
    b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>"
    b"<CreateTime>" + b"9" * 5000 + b"</CreateTime><MsgType>text</MsgType></xml>",
    b"\xef\xbb\xbf\xef\xbb\xbf<xml/>",
    "<xml>\ud800</xml>".encode("utf-8", "surrogatepass"),
], ids=["empty", "nuls", "truncated", "not-utf8", "unknown-encoding", "control-chars",
        "nul-in-cdata", "too-deep", "wrong-root", "superscript-createtime",
        "5000-digit-createtime", "double-bom", "surrogate"])
async def test_broken_bodies_are_400_and_the_server_goes_on(client, make_push, body):
    r = await post(client, signed(body))
    assert r.status_code == 400
    await assert_still_serving(client, make_push)


async def test_a_used_query_lets_no_other_body_reach_the_parser(client, make_push, secret_file):
    # The nonce memory is consulted before parsing: a captured query (here from a push
    # already answered) admits no second body, hostile or not, into the parser.
    good = make_push("subscribe")
    assert (await post(client, good)).status_code == 200
    for body in (b"<xml><broken", _xxe(secret_file, encoding="utf-16")):
        r = await post(client, good, body)
        assert r.status_code == 403 and r.content.startswith(b"replay")


async def test_a_broken_body_uses_up_its_query(client):
    # The first body signed for a query is the one remembered, parsable or not: only
    # someone holding the token (or WeChat) can sign a fresh query.
    good = sign_push(push_xml("subscribe", openid=OPENID), token=TOKEN, openid=OPENID)
    assert (await post(client, good, b"<xml><broken")).status_code == 400
    assert (await post(client, good, b"<xml><broken")).status_code == 400  # a retry
    assert (await post(client, good)).status_code == 403


async def test_control_characters_in_the_query_are_not_a_5xx(client, make_push):
    nonce = "12\x0134\x7f"
    r = await post(client, signed(push_xml("text", openid=OPENID), nonce=nonce))
    assert r.status_code == 400 and r.content.startswith(b"nonce")
    await assert_still_serving(client, make_push)


# -- freshness and replay -----------------------------------------------------------------------

@pytest.mark.parametrize("offset", [-3600, 3600, -86400 * 365])
async def test_timestamps_outside_the_window_are_403(client, offset):
    r = await post(client, signed(push_xml("subscribe", openid=OPENID),
                                  ts=int(time.time()) + offset))
    assert r.status_code == 403
    assert b"Welcome" not in r.content


@pytest.mark.parametrize("ts", ["abc", "", "1e9", "9" * 5000, "-1"])
async def test_malformed_timestamps_are_4xx(client, ts):
    params = {"signature": sign(TOKEN, ts, "1"), "timestamp": ts, "nonce": "1", "openid": OPENID}
    r = await client.post("/wechat", params=params, content=push_xml("text", openid=OPENID))
    assert 400 <= r.status_code < 500


async def test_a_captured_query_cut_anew_admits_nothing(client):
    # A real push whose nonce starts with a zero: its signature fits every pair cut anew from
    # the same characters ("012" and "0" + timestamp among them). None is a query WeChat
    # sends: refused as a push and as a verification, whatever body comes with it.
    ts = str(int(time.time()))
    real = signed(push_xml("text", openid=OPENID, text="hello"), ts=int(ts), nonce="0120")
    assert (await post(client, real)).status_code == 200
    others = respellings(TOKEN, ts, "0120") - {(ts, "0120")}
    assert ("0" + ts, "012") in others
    for t, n in others:
        params = {**real.params, "timestamp": t, "nonce": n}
        r = await client.post("/wechat", params=params,
                              content=push_xml("text", openid=OPENID, text="help"))
        assert 400 <= r.status_code < 500 and b"<xml>" not in r.content, (t, n)
        r = await client.get("/wechat", params={**params, "echostr": "e"})
        assert 400 <= r.status_code < 500 and r.content != b"e", (t, n)


def _spellings(ts: str) -> list[str]:
    """The same second as int() reads it, written otherwise."""
    return ["0" + ts, "00" + ts, "+" + ts, " " + ts, ts + " ", "\t" + ts, ts + "\n",
            ts[:4] + "_" + ts[4:], spelled_in("０１２３４５６７８９", ts),
            spelled_in("٠١٢٣٤٥٦٧٨٩", ts), "+0" + ts]


@pytest.mark.parametrize("index", range(11))
async def test_a_timestamp_spelled_another_way_is_400(client, make_push, index):
    ts = str(int(time.time()))
    spelled = _spellings(ts)[index]
    assert int(spelled) == int(ts)
    params = {"signature": sign(TOKEN, spelled, "4375"), "timestamp": spelled, "nonce": "4375",
              "openid": OPENID}
    r = await client.post("/wechat", params=params, content=push_xml("text", openid=OPENID))
    assert r.status_code == 400 and r.content.startswith(b"timestamp: "), r.text
    r = await client.get("/wechat", params={**params, "echostr": "e"})
    assert r.status_code == 400 and r.content.startswith(b"timestamp: "), r.text
    await assert_still_serving(client, make_push)


@pytest.mark.parametrize("nonce", ["", "a" * 33, "12 34", "+1", "１２３", "a_b", "1\n", "é"])
async def test_a_nonce_wechat_would_not_send_is_400(client, nonce):
    ts = str(int(time.time()))
    params = {"signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
    r = await client.post("/wechat", params=params, content=push_xml("text", openid=OPENID))
    g = await client.get("/wechat", params={**params, "echostr": "e"})
    for answer in (r, g):
        assert answer.status_code == 400, answer.text
        assert answer.content.startswith(b"nonce: " if nonce else b"bad_request: ")


@pytest.mark.parametrize("what", ["signature", "msg_signature"])
@pytest.mark.parametrize("value", ["0" * 39, "0" * 41, "g" * 40, " " + "0" * 39, "0" * 40 + "\n"])
async def test_a_signature_that_is_not_40_hex_digits_is_403(client, make_push, what, value):
    push = make_push("subscribe", aes=True)
    r = await post(client, Push({**push.params, what: value}, push.body))
    assert r.status_code == 403 and r.content.startswith(f"{what}: {what} is not 40".encode())


async def test_a_flood_of_misspelled_queries_writes_a_bounded_number_of_lines(make_app):
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    from structlog.testing import capture_logs

    from service.metrics import Metrics

    app = make_app(clock=Clock(), metrics=Metrics())
    ts = str(int(time.time()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        with capture_logs() as logs:
            for i in range(60):
                spelled = "0" * (i % 5 + 1) + ts
                q = {"signature": sign(TOKEN, spelled, "1"), "timestamp": spelled, "nonce": "1"}
                assert (await c.post("/wechat", params=q, content=b"")).status_code == 400
                assert (await c.get("/wechat", params={**q, "echostr": "e"})).status_code == 400
    refused = [e for e in logs if e["event"] in ("push_refused", "url_verification_refused")]
    assert len(refused) == 10 and {e["reason"] for e in refused} == {"timestamp"}


async def test_same_nonce_same_body_is_a_retry_answered_identically(client, sandbox):
    push = signed(push_xml("subscribe", openid=OPENID, create_time=int(time.time())))
    first = await post(client, push)
    again = await post(client, push)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and b"Welcome" in first.content
    assert sandbox.calls["/cgi-bin/user/info"] == 1


async def test_same_nonce_different_body_is_a_403_replay(client):
    push = signed(push_xml("text", openid=OPENID, text="hello"))
    assert (await post(client, push)).status_code == 200
    forged = push_xml("text", openid=OPENID, text="help")
    r = await post(client, push, forged)
    assert r.status_code == 403 and b"replay" in r.content


async def test_the_query_of_an_encrypted_push_carries_no_forged_plaintext(client, make_push,
                                                                          sandbox):
    # The nonce memory keeps (timestamp, nonce, body digest) in every mode: the query of a
    # real encrypted push, without encrypt_type and msg_signature, admits no other body.
    real = make_push("subscribe", aes=True)
    assert (await client.post("/wechat", params=real.params, content=real.body)).status_code == 200
    params = {k: v for k, v in real.params.items() if k not in ("encrypt_type", "msg_signature")}
    for openid in (OPENID, "oSomeoneElse000000000000000x"):
        forged = push_xml("text", openid=openid, text="transfer everything")
        r = await client.post("/wechat", params=params, content=forged)
        assert r.status_code == 403 and r.content.startswith(b"replay")
    assert sandbox.calls["/cgi-bin/user/info"] <= 1


# -- broken ciphertexts (each with a valid msg_signature, so decryption itself is tested) ----------

def _raw_encrypt(plain: bytes) -> str:
    key = base64.b64decode(AES_KEY + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def _framed(msg: bytes, appid: bytes, pad: int | None = None) -> bytes:
    body = secrets.token_bytes(16) + struct.pack(">I", len(msg)) + msg + appid
    n = 32 - len(body) % 32 if pad is None else pad
    return body + bytes([n]) * n


_MSG = push_xml("subscribe", openid=OPENID)

BROKEN_CIPHERTEXTS = {
    "not-base64": "!!!not*base64!!!",
    "bad-base64-padding": base64.b64encode(b"x" * 32).decode().rstrip("=") + "=",
    "non-ascii": "密文" * 8,
    "empty-after-decode": "",
    "not-a-block-multiple": base64.b64encode(secrets.token_bytes(33)).decode(),
    "one-block": base64.b64encode(secrets.token_bytes(16)).decode(),
    "random-blocks": base64.b64encode(secrets.token_bytes(256)).decode(),
    "wrong-appid": _raw_encrypt(_framed(_MSG, b"wx0000000000other")),
    "pad-zero": _raw_encrypt(_framed(_MSG, SANDBOX_APP_ID.encode())[:-1] + b"\x00"),
    "pad-too-big": _raw_encrypt((_framed(_MSG, SANDBOX_APP_ID.encode(), pad=0) + b"\x21" * 64)
                                [:((len(_MSG) + 40) // 16 + 4) * 16]),
    "length-beyond-plaintext": _raw_encrypt(
        _framed(b"", SANDBOX_APP_ID.encode())[:16] + struct.pack(">I", 10**6) + b"\x0c" * 12),
    "not-xml-inside": _raw_encrypt(_framed(b"\xff\xfe garbage", SANDBOX_APP_ID.encode())),
    "other-key": MessageCrypto(TOKEN, ["B" * 43], SANDBOX_APP_ID).encrypt(_MSG),
}


@pytest.mark.parametrize("name", list(BROKEN_CIPHERTEXTS))
async def test_broken_ciphertexts_are_400(client, make_push, name):
    r = await post(client, encrypted(BROKEN_CIPHERTEXTS[name]))
    assert r.status_code == 400, r.text
    await assert_still_serving(client, make_push)


@pytest.mark.parametrize("change", ["wrong", "missing", "uppercase-of-wrong"])
async def test_msg_signature_guards_the_body(client, crypto, change):
    push = encrypted(crypto.encrypt(_MSG))
    params = dict(push.params)
    if change == "missing":
        del params["msg_signature"]
    else:
        params["msg_signature"] = ("A" if change.startswith("upper") else "0") * 40
    r = await client.post("/wechat", params=params, content=push.body)
    assert r.status_code == 403
    assert b"Welcome" not in r.content


async def test_a_valid_ciphertext_swapped_into_another_signed_query_is_403(client, crypto):
    # msg_signature binds the ciphertext: a captured query cannot carry another Encrypt.
    one, other = encrypted(crypto.encrypt(_MSG)), encrypted(crypto.encrypt(_MSG))
    r = await client.post("/wechat", params=one.params, content=other.body)
    assert r.status_code == 403


async def test_a_burst_of_hostile_pushes_leaves_no_5xx(client, make_push, secret_file):
    bodies = [_xxe(secret_file), BILLION_LAUGHS, b"<xml><broken", b"\xff" * 100,
              b"<xml>" + b"x" * (300 * 1024) + b"</xml>"]
    pushes = [signed(b) for b in bodies] + [encrypted(c) for c in BROKEN_CIPHERTEXTS.values()]
    pushes += [make_push("subscribe", openid="o" + secrets.token_hex(14)[:27]) for _ in range(5)]
    answers = await asyncio.gather(*(post(client, p) for p in pushes))
    assert all(a.status_code < 500 for a in answers)
    assert all(a.status_code == 200 for a in answers[-5:])


@pytest.mark.parametrize("aes", [False, True], ids=["plain", "safe"])
async def test_an_unexpected_parser_error_is_a_400_not_a_5xx(settings, make_push, aes):
    from service.errors import GuardError
    from service.guard import Guard
    from service.metrics import Metrics
    from service.store.memory import MemoryStore

    def broken(fields: Any) -> Any:
        raise ValueError("a parser bug some odd input found")

    guard = Guard(settings, store=MemoryStore(), namespace="t:", metrics=Metrics(),
                  build=broken)
    push = make_push("subscribe", aes=aes)
    scope = {"headers": [(b"content-length", str(len(push.body)).encode())]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": push.body, "more_body": False}

    with pytest.raises(GuardError) as refused:
        await guard.admit(scope, receive, push.params, time.monotonic() + 5)
    assert refused.value.status == 400 and "unreadable push (ValueError)" in str(refused.value)
