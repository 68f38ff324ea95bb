"""Only the encodings WeChat can send: every codec Python knows, every way a body can name one.

A body names its encoding by a byte-order mark, by its first bytes (NULs) or by its XML
declaration. Whatever it names, it is either one of a short list (and then decoded, in
linear time, to the right text) or a 400 before anything is decoded: no codec, no parser.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import encodings
import encodings.aliases
import pkgutil
import secrets
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from lxml import etree

from tests.conftest import OPENID
from tests.support import TOKEN
from wxhook.errors import XMLError
from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import TextReply
from wxhook.router import Context, Router
from wxhook.server.signature import sign
from wxhook.server.xmldoc import parse_fields
from wxhook.tools.sandbox.state import Fault
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push

# The policy, written down here rather than read from wxhook.server.charset: the codecs a body may
# be decoded with (codecs.lookup's names), the labels real senders write that must work, and
# aliases Python knows for those codecs that nobody writes in a declaration.
ALLOWED = {"utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be",
           "gb18030", "gbk", "gb2312", "big5", "ascii", "iso8859-1"}
REAL_LABELS = ["UTF-8", "utf-8", "utf8", "UTF8", "UTF-16", "UTF-16LE", "UTF-16BE", "UTF-32",
               "GB18030", "GBK", "gbk", "GB2312", "gb2312", "cp936", "CP936", "Big5", "BIG5",
               "US-ASCII", "ascii", "ISO-8859-1", "iso-8859-1", "ISO8859_1", "latin1"]
NOBODY_WRITES = ["u8", "utf", "cp65001", "utf8-ucs4", "chinese", "l1", "iso-ir-100", "646",
                 "csbig5", "unicodelittleunmarked", "utf-8-sig", "u16", "u32", "euc_cn"]


def every_codec_name() -> list[str]:
    """Every name Python resolves a codec by: its aliases, their targets, the encodings
    package's modules, the codecs' own names (and some that resolve to nothing here)."""
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names |= {m.name for m in pkgutil.iter_modules(encodings.__path__)} - {"aliases"}
    for name in list(names):
        with contextlib.suppress(LookupError):  # mbcs, oem: Windows only; still a name to try
            names.add(codecs.lookup(name).name)
    return sorted(names)


CODEC_NAMES = every_codec_name()


def family(label: str) -> str | None:
    """The codec Python decodes `label` with, or None."""
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


# -- documents ---------------------------------------------------------------------------------

_FIELDS = ("<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[o1]]>"
           "</FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType>"
           "<Content><![CDATA[{}]]></Content><MsgId>1</MsgId></xml>")


def content_for(label: str, n: int) -> str:
    """Text the codec can carry (Chinese where it can), then n letters, "-", n letters: the
    shape that makes punycode insert n characters one by one into an ever longer string."""
    sample = next((s for s in ("你好，世界", "café") if _carries(label, s)), "hello")
    return sample + " " + "a" * n + "-" + "a" * n


def _carries(label: str, sample: str) -> bool:
    try:
        return bool(codecs.decode(codecs.encode(sample, label), label) == sample)
    except Exception:  # noqa: BLE001 - not a text codec, unknown here, or cannot write it
        return False


def declaration(label: str, *, spaced: bool = False) -> str:
    if spaced:  # XML's Eq allows whitespace; either quote
        return f"<?xml version='1.0'  encoding = '{label}' ?>\n"
    return f'<?xml version="1.0" encoding="{label}"?>'


def in_label(text: str, label: str) -> bytes:
    """`text` in the codec it declares, as a sender using that codec would write it; ASCII
    (with the declaration) where the codec cannot write it."""
    try:
        out = codecs.encode(text, label)
    except Exception:  # noqa: BLE001 - not a text codec, or cannot write the text
        out = None
    return out if isinstance(out, bytes) else text.encode("ascii", "replace")


# Every way a body can name its encoding: the declaration alone (two spellings), and a
# declaration next to a mark or a wide layout that may contradict it.
WAYS: dict[str, Callable[[str, str], bytes]] = {
    "declared": lambda label, doc: in_label(declaration(label) + doc, label),
    "declared-spaced": lambda label, doc: in_label(declaration(label, spaced=True) + doc, label),
    "utf-8-bom": lambda label, doc: codecs.BOM_UTF8 + (declaration(label) + doc).encode(),
    "utf-16-le-bom": lambda label, doc: (codecs.BOM_UTF16_LE
                                         + (declaration(label) + doc).encode("utf-16-le")),
    "utf-16-be": lambda label, doc: (declaration(label) + doc).encode("utf-16-be"),
    "utf-32-be-bom": lambda label, doc: (codecs.BOM_UTF32_BE
                                         + (declaration(label) + doc).encode("utf-32-be")),
}
# The codecs a declaration may name beside each mark or layout (None: the declaration rules).
LAYOUT_FITS: dict[str, set[str] | None] = {
    "declared": None, "declared-spaced": None, "utf-8-bom": {"utf-8"},
    "utf-16-le-bom": {"utf-16", "utf-16-le"}, "utf-16-be": {"utf-16", "utf-16-be"},
    "utf-32-be-bom": {"utf-32", "utf-32-be"}}


@pytest.fixture
def lxml_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What libxml2 is given, through every lxml entry point that takes a document."""
    seen: list[bytes] = []

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(data: Any, *args: Any, **kw: Any) -> Any:
            seen.append(data)
            return real(data, *args, **kw)
        return call

    for name in ("fromstring", "XML", "parse", "iterparse"):
        monkeypatch.setattr(etree, name, spy(getattr(etree, name)))
    return seen


def utf8_from_the_root(data: object) -> bool:
    """Whether libxml2 gets UTF-8 that starts at the root: no mark or declaration to read."""
    if not isinstance(data, bytes) or not data.lstrip(b" \t\r\n").startswith(b"<xml"):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def allocated_by(fn: Callable[[], Any], runs: int = 3) -> tuple[Any, int]:
    """fn()'s result (or the exception it raised) and the most memory it held at once, the
    least of a few runs (a cache or table growing once is not the call's own)."""
    least = None
    for _ in range(runs):
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            out: Any = fn()
        except Exception as exc:  # noqa: BLE001 - a refusal is measured like an answer
            out = exc
        held = tracemalloc.get_traced_memory()[1] - before
        least = held if least is None else min(least, held)
    assert least is not None
    return out, least


def test_every_codec_is_allowed_or_refused_before_anything_is_decoded(traced, lxml_calls):
    # Refused: the memory it takes does not grow with the body (decoding it in ANY codec,
    # or handing it to lxml, holds at least the body's length as text) and lxml is never
    # called. Accepted: a codec on the list, agreeing with the mark, and the right text.
    accepted: set[tuple[str, str]] = set()
    problems: list[str] = []
    labels = [*CODEC_NAMES, *(name.upper() for name in CODEC_NAMES), *REAL_LABELS, *NOBODY_WRITES]
    for label in dict.fromkeys(labels):
        small_doc = _FIELDS.format(content_for(label, 16))
        content = content_for(label, 4096)  # a body of ~8 KB (~32 KB in UTF-32)
        doc = _FIELDS.format(content)
        for way, build in WAYS.items():
            small, body = build(label, small_doc), build(label, doc)
            _, baseline = allocated_by(lambda small=small: parse_fields(small))
            del lxml_calls[:]
            out, peak = allocated_by(lambda body=body: parse_fields(body))
            where = f"{label!r} {way}"
            if isinstance(out, XMLError):
                grown = peak - baseline
                if grown > (len(body) - len(small)) // 4 or lxml_calls:
                    problems.append(f"{where}: refused after decoding ({grown} bytes more for "
                                    f"{len(body) - len(small)} more, lxml {len(lxml_calls)})")
                continue
            if isinstance(out, Exception):
                problems.append(f"{where}: {type(out).__name__}: {out}")
                continue
            accepted.add((label, way))
            fits = LAYOUT_FITS[way]
            if family(label) not in (ALLOWED if fits is None else fits):
                problems.append(f"{where}: accepted, decoded as {family(label)}")
            elif out.get("Content") != content:
                problems.append(f"{where}: accepted with the wrong text")
            if not all(utf8_from_the_root(d) for d in lxml_calls):
                problems.append(f"{where}: lxml was given something to choose a codec by")
    assert not problems, "\n".join(problems[:40])
    for label in REAL_LABELS:
        assert (label, "declared") in accepted and (label, "declared-spaced") in accepted, label
    assert not {(label, "declared") for label in NOBODY_WRITES} & accepted
    # A declaration beside the mark or layout it fits is read, not only refused.
    assert {("UTF-8", "utf-8-bom"), ("UTF-16", "utf-16-le-bom"), ("UTF-16", "utf-16-be"),
            ("UTF-16BE", "utf-16-be"), ("UTF-32", "utf-32-be-bom")} <= accepted


def _best_of(fn: Callable[[], object], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        with contextlib.suppress(XMLError):
            fn()
        best = min(best, time.perf_counter() - started)
    return best


def test_reading_a_body_is_linear_in_its_length_whatever_it_declares():
    # 8x the body must cost about 8x, not 64x: punycode is quadratic (a 250 KB body held
    # the event loop for seconds). A ratio of the same run's timings, best of five, with
    # room for noise: no absolute figure, so a slow machine passes as a fast one does.
    slow: list[str] = []
    ways = {**WAYS,
            "ascii": lambda label, doc: (declaration(label) + doc).encode("ascii", "replace")}
    for label in CODEC_NAMES:
        # As a sender of that codec writes it, as an attacker does (ASCII bytes, whatever
        # they declare), and behind a mark.
        for way in ("declared", "ascii", "utf-16-le-bom"):
            small, large = (ways[way](label, _FIELDS.format(content_for(label, n)))
                            for n in (2048, 8 * 2048))
            t1 = _best_of(lambda small=small: parse_fields(small))
            t8 = _best_of(lambda large=large: parse_fields(large))
            if t8 > 24 * t1:
                slow.append(f"{label} {way}: {t8 / t1:.0f}x the time for 8x the body")
    assert not slow, slow


def test_a_wide_body_is_not_read_as_ascii_where_its_units_are_not():
    # U+3C3C is read from its low byte as "<" only if the other byte is zero: it is not.
    fake = "".join(chr(0x3C00 | ord(c)) for c in "<xml>") + "<a>1</a></xml>"
    for body in (codecs.BOM_UTF16_LE + fake.encode("utf-16-le"),
                 codecs.BOM_UTF32_LE + fake.encode("utf-32-le")):
        with pytest.raises(XMLError, match="must start with the <xml> root"):
            parse_fields(body)


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0" encoding=punycode?><xml/>',           # unquoted
    b'<?xml version="1.0" encoding="utf-8\'?><xml/>',            # mismatched quotes
    b'<?xml version="1.0" ENCODING="utf-8"?><xml/>',             # XML is case-sensitive
    b'<?xml encoding="utf-8"?><xml/>',                           # no version
    b'<?xml version="1.0" encoding="utf-8" encoding="punycode"?><xml/>',
    b'<?xml version="1.0" encoding=" utf-8"?><xml/>',
    b'<?xml version="1.0" standalone="yes" encoding="utf-8"?><xml/>',  # order is fixed
    b'<?xml version="1.0" encoding="' + b"u" * 41 + b'"?><xml/>',
], ids=["unquoted", "quotes", "case", "no-version", "twice", "padded-name", "order", "long"])
def test_a_declaration_is_read_by_xmls_grammar_or_refused(body):
    with pytest.raises(XMLError, match=r"declaration"):
        parse_fields(body)


# -- through the route -------------------------------------------------------------------------

def echo_router() -> Router:
    r = Router()

    @r.message("text")
    async def echo(msg: InboundMessage, ctx: Context) -> TextReply:
        assert isinstance(msg, TextMessage)
        return TextReply(f"got {msg.content}")

    return r


def text_push(content: str) -> str:
    return push_xml("text", openid=OPENID, text=content).decode()


def signed(body: bytes) -> Push:
    return sign_push(body, token=TOKEN, openid=OPENID)


PUNYCODE_250K = (b'<?xml version="1.0" encoding="punycode"?><xml><Content>'
                 + b"a" * 125_000 + b"-" + b"a" * 125_000)


async def test_a_punycode_push_is_refused_at_once_and_a_concurrent_push_is_answered(
        make_settings, make_app, sandbox):
    # The good push is waiting for user/info when the hostile one arrives. Decoding
    # 250 KB of punycode held the event loop for seconds: the good push's deadline
    # (2.5 s here) could not fire in time and it was answered "success", not its greeting.
    app = make_app(settings=make_settings(WXHOOK_DEADLINE="2.5"))
    sandbox.add_fault(Fault("/cgi-bin/user/info", latency=0.3))
    good = signed(push_xml("subscribe", openid=OPENID))
    hostile = signed(PUNYCODE_250K)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        async def late_hostile() -> httpx.Response:
            await asyncio.sleep(0.05)
            return await client.post("/wechat", params=hostile.params, content=hostile.body)

        answered, refused = await asyncio.gather(
            client.post("/wechat", params=good.params, content=good.body), late_hostile())
    assert refused.status_code == 400
    assert refused.content.startswith(b"encoding: 'punycode' is not an encoding WeChat sends")
    assert answered.status_code == 200
    assert decode_reply(answered.content, crypto=None)["Content"] == "Welcome, 刺猬宝宝!"


def _aes_params(encrypt: str) -> dict[str, str]:
    ts, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
    return {"signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce,
            "openid": OPENID, "encrypt_type": "aes",
            "msg_signature": sign(TOKEN, ts, nonce, encrypt)}


def _encrypted_push(crypto: Any, inner: bytes) -> Push:
    """A safe-mode push of `inner`, whatever it holds (sign_push would parse it first)."""
    encrypt = crypto.encrypt(inner)
    return Push(_aes_params(encrypt), f"<xml><ToUserName><![CDATA[gh_sandbox000001]]>"
                f"</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode())


# Every place an encoding can be named in a push, each with a codec that is not allowed.
HOSTILE = {
    "declared": lambda doc: in_label(declaration("punycode") + doc, "punycode"),
    "spaced-upper": lambda doc: (declaration("PUNYCODE", spaced=True) + doc).encode(),
    "utf-7": lambda doc: in_label(declaration("utf-7") + doc, "utf-7"),
    "utf-8-bom": lambda doc: codecs.BOM_UTF8 + (declaration("punycode") + doc).encode(),
    "utf-16-bom": lambda doc: (declaration("punycode") + doc).encode("utf-16"),
    "utf-16-be": lambda doc: (declaration("punycode") + doc).encode("utf-16-be"),
    "bom-contradicted": lambda doc: codecs.BOM_UTF8 + (declaration("GBK") + doc).encode(),
    "layout-contradicted": lambda doc: (declaration("UTF-16") + doc).encode(),
}


@pytest.mark.parametrize("way", HOSTILE)
@pytest.mark.parametrize("mode", ["plain", "safe", "compat-outer"])
async def test_a_push_in_an_encoding_not_allowed_is_a_400(make_app, make_settings, crypto,
                                                          way, mode):
    app = make_app(settings=make_settings(WXHOOK_MESSAGE_MODE="compat"), router=echo_router())
    body = HOSTILE[way](text_push("hello"))
    if mode == "safe":  # the decrypted inner XML is read by the same reader
        push = _encrypted_push(crypto, body)
    elif mode == "compat-outer":  # and so is the outer body of an encrypted push
        encrypt = crypto.encrypt(text_push("hello").encode())
        outer = HOSTILE[way](text_push("hello").replace(
            "</xml>", f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"))
        push = Push(_aes_params(encrypt), outer)
    else:
        push = signed(body)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 400, r.content
    assert r.content.startswith(b"encoding: '"), r.content


async def test_the_http_charset_never_chooses_the_encoding(client):
    push = signed(text_push("你好").encode())
    r = await client.post("/wechat", params=push.params, content=push.body,
                          headers={"content-type": "text/xml; charset=punycode"})
    assert r.status_code == 200


ALLOWED_PUSHES = {
    "utf-8": lambda doc: doc.encode(),
    "utf-8-declared": lambda doc: (declaration("UTF-8") + doc).encode(),
    "utf8": lambda doc: (declaration("utf8") + doc).encode(),
    "utf-8-bom": lambda doc: codecs.BOM_UTF8 + (declaration("utf-8") + doc).encode(),
    "gbk": lambda doc: (declaration("GBK") + doc).encode("gbk"),
    "gb2312": lambda doc: (declaration("gb2312") + doc).encode("gb2312"),
    "gb2312-with-gbk-characters": lambda doc: (declaration("GB2312") + doc + "<!-- 镕 -->"
                                               ).encode("gbk"),
    "cp936": lambda doc: (declaration("cp936", spaced=True) + doc).encode("gbk"),
    "gb18030": lambda doc: (declaration("GB18030") + doc).encode("gb18030"),
    "big5": lambda doc: (declaration("Big5") + doc).encode("big5"),
    "utf-16-bom": lambda doc: (declaration("UTF-16") + doc).encode("utf-16"),
    "utf-16-be-bom": lambda doc: codecs.BOM_UTF16_BE + (declaration("UTF-16") + doc
                                                        ).encode("utf-16-be"),
    "utf-16le-no-bom": lambda doc: (declaration("UTF-16LE") + doc).encode("utf-16-le"),
    "utf-16-no-declaration": lambda doc: doc.encode("utf-16"),
    "utf-32-bom": lambda doc: (declaration("UTF-32") + doc).encode("utf-32"),
}


@pytest.mark.parametrize("way", ALLOWED_PUSHES)
@pytest.mark.parametrize("aes", [False, True])
async def test_pushes_in_each_allowed_encoding_still_parse(make_app, crypto, way, aes):
    app = make_app(router=echo_router())
    text = "你好，世界"
    body = ALLOWED_PUSHES[way](text_push(text))
    push = _encrypted_push(crypto, body) if aes else signed(body)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200, r.content
    assert decode_reply(r.content, crypto=crypto if aes else None)["Content"] == f"got {text}"


@pytest.mark.parametrize("label, text", [("US-ASCII", "hello"), ("ISO-8859-1", "café"),
                                         ("latin1", "naïve")])
async def test_pushes_in_single_byte_encodings_still_parse(make_app, label, text):
    app = make_app(router=echo_router())
    push = signed((declaration(label) + text_push(text)).encode(label))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        r = await client.post("/wechat", params=push.params, content=push.body)
    assert decode_reply(r.content, crypto=None)["Content"] == f"got {text}"


@pytest.mark.slow
def test_a_real_server_refuses_punycode_and_answers_the_push_next_to_it():
    from tests.support import sandbox_process, server_process

    with sandbox_process() as api, server_process(api, WXHOOK_DEADLINE="2.5") as base:
        httpx.post(f"{api}/_sandbox/faults", json={"path": "/cgi-bin/user/info",
                                                   "latency": 0.3}).raise_for_status()
        good = signed(push_xml("subscribe", openid=OPENID))
        answers: list[httpx.Response] = []

        def send_good() -> None:
            answers.append(httpx.post(f"{base}/wechat", params=good.params,
                                      content=good.body, timeout=10))

        thread = threading.Thread(target=send_good)
        thread.start()
        time.sleep(0.1)  # the good push is now waiting for user/info
        hostile = signed(PUNYCODE_250K)
        refused = httpx.post(f"{base}/wechat", params=hostile.params, content=hostile.body,
                             timeout=10)
        thread.join(10)
    assert refused.status_code == 400 and b"punycode" in refused.content
    assert answers and answers[0].status_code == 200
    assert decode_reply(answers[0].content, crypto=None)["Content"] == "Welcome, 刺猬宝宝!"
