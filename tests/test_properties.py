"""Property-based tests and a short fuzz run: parsing, crypto round-trips, reply rendering.

Each property says what must hold for ANY input, not for the few examples a person thinks of:
the parser and decryptor raise only their own errors; what we encrypt wechatpy decrypts and
back; any string a handler returns renders to XML that parses back to the same text.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from wechatpy.crypto import PrpCrypto, WeChatCrypto

from tests.support import AES_KEY, SANDBOX_APP_ID, TOKEN, examples
from wxhook.errors import DecryptError, XMLError
from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import TextReply, render
from wxhook.server.crypto import MessageCrypto
from wxhook.server.xmldoc import flat_fields, parse_fields, parse_message, tree_fields
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

OLD_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
OURS = MessageCrypto(TOKEN, [AES_KEY], SANDBOX_APP_ID)
ROTATED = MessageCrypto(TOKEN, [AES_KEY, OLD_KEY], SANDBOX_APP_ID)
THEIRS = WeChatCrypto(TOKEN, AES_KEY, SANDBOX_APP_ID)
THEIR_PRP = PrpCrypto(base64.b64decode(AES_KEY + "="))
OPENID = "oPropertyFollower0000000000A"

FAST = settings(max_examples=examples(120), deadline=None)
FUZZ = settings(max_examples=examples(400), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What XML 1.0 cannot carry (the renderer strips it) and what parsers normalise (\r, \r\n).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def as_parsed(text: str) -> str:
    """What a conforming XML parser gives back for `text` written into CDATA."""
    return _XML_INVALID.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


# -- parsing --------------------------------------------------------------------------------------

_SNIPPETS = [
    "<xml>", "</xml>", "<ToUserName>", "</ToUserName>", "<FromUserName>", "</FromUserName>",
    "<CreateTime>", "</CreateTime>", "<MsgType>", "</MsgType>", "<Content>", "</Content>",
    "<Event>", "</Event>", "<![CDATA[", "]]>", "<!DOCTYPE xml [", "<!ENTITY e 'x'>", "]>",
    "&e;", "&amp;", "&#0;", "&#x1F600;", "<?xml version='1.0'?>", "<!-- c -->", "<?pi x?>",
    "text", "subscribe", "event", "1700000000", "\x00", "\xff", "é", "<a b='c'/>", "<", ">",
    "<PicList><item><PicMd5Sum>x</PicMd5Sum></item></PicList>", "<MsgId>", "</MsgId>",
]


@st.composite
def xmlish(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from(_SNIPPETS) | st.text(max_size=12), max_size=40))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
    return "".join(parts).encode(encoding, errors="replace")


@FAST
@given(body=st.binary(max_size=4000) | xmlish())
def test_parser_raises_only_xml_error(body: bytes) -> None:
    try:
        fields = parse_fields(body)
    except XMLError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    try:
        msg = parse_message(body)
    except XMLError:
        return
    assert isinstance(msg, InboundMessage)
    assert msg.dedup_key()  # every parsed push has a key for retry de-duplication


_field_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)

# Pieces of flat pushes, and of things that look like them but are not: what XML forbids or
# normalises, markup inside text, names lxml takes and the flat reader does not. Each piece
# is mostly clean, so about half the documents are flat and the property has work to do.
_CLEAN_TEXT = ["a", "7", " ", "\t", "\n", "é", "你", "😀", "]", "]]", ">", "<", "&", "&amp;",
               "<![CDATA[", "</x>"]
_NOISY_TEXT = ["\r", "\x00", "\x0b", "\ufffe", "]]>", "\u3000"]
_CLEAN_NAMES = ["MsgType", "Content", "x", "_a1", "PicMd5Sum", "MsgId", "FromUserName",
                "ToUserName", "Event", "EventKey"]
_NOISY_NAMES = ["a-b", "a.b", "ns:a", "é", "1a", "xml", "x y"]


@st.composite
def flattish(draw: st.DrawFn) -> bytes:
    def pick(clean: list[str], noisy: list[str], odds: int = 40) -> str:
        return draw(st.sampled_from(noisy if draw(st.integers(1, odds)) == 1 else clean))

    def space() -> str:
        return "".join(pick([" ", "\n", "\t", ""], ["\r", "\x0b", "\u3000"])
                       for _ in range(draw(st.integers(0, 2))))

    leaves = []
    names = draw(st.permutations(_CLEAN_NAMES))
    for i in range(draw(st.integers(0, 6))):
        # Mostly distinct names; now and then a repeated one, which both readers refuse.
        tag = pick([names[i]], [*names[:i], *_NOISY_NAMES] if i else _NOISY_NAMES, 12)
        n = draw(st.integers(0, 6))
        if draw(st.booleans()):
            text = "".join(pick(_CLEAN_TEXT, _NOISY_TEXT, 15) for _ in range(n))
            inner = f"<![CDATA[{text}]]>" + pick([""], ["x", "<![CDATA[y]]>"])
        else:  # character data: markup characters only by mistake
            inner = "".join(pick([*_CLEAN_TEXT[:8], ">"], [*_NOISY_TEXT, "<", "&", "]", "&amp;"],
                                 15) for _ in range(n))
        leaves.append(f"{space()}<{tag}>{inner}</{pick([tag], _CLEAN_NAMES)}>")
    doc = f"{space()}<xml>{''.join(leaves)}{space()}</xml>{space()}"
    return doc.encode(pick(["utf-8"], ["utf-16", "latin-1"]), "replace")


@settings(FUZZ, max_examples=examples(1000))
@given(body=flattish())
@example(body=b"<xml><a><![CDATA[x\ry]]></a></xml>")       # lxml reads \r as \n
@example(body=b"<xml><a>x\r\ny</a></xml>")
@example(body=b"<xml><a><![CDATA[x]]]]></a></xml>")        # the section ends at the first ]]>
@example(body=b"<xml><a><![CDATA[\xef\xbf\xbe]]></a></xml>")  # U+FFFE is not an XML character
@example(body=b"<xml>\x0b<a>x</a></xml>")
@example(body=b"<xml><PicMd5Sum>a</PicMd5Sum><PicMd5Sum>b</PicMd5Sum><MsgId> 7 </MsgId></xml>")
@example(body=b"<xml><MsgId>1</MsgId><x>a</x><MsgId>2</MsgId></xml>")
def test_the_flat_reader_agrees_with_lxml(body: bytes) -> None:
    # The flat reader only answers when it reads a document exactly as lxml does, and
    # refuses (a repeated field) exactly what the tree reader refuses.
    flat = reading(flat_fields, body)
    if flat is None:
        return
    assert flat == reading(tree_fields, body)


def reading(reader: Callable[[bytes], dict[str, str] | None],
            body: bytes) -> dict[str, str] | str | None:
    """A reader's fields, or "refused" when it raises XMLError."""
    try:
        return reader(body)
    except XMLError:
        return "refused"


# Containers, documented or not, holding what would be top-level fields and what WeChat
# documents inside them, nested again now and then.
_CONTAINER_NAMES = ["Extra", "ScanCodeInfo", "SendPicsInfo", "SendLocationInfo", "PicList",
                    "item", "CopyrightCheckResult"]
_INNER_NAMES = ["FromUserName", "ToUserName", "MsgType", "MsgId", "MsgID", "Event", "EventKey",
                "CreateTime", "ScanType", "ScanResult", "Count", "PicMd5Sum", "Location_X",
                "Label", "Poiname", "Content"]


@st.composite
def container(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(st.sampled_from(_CONTAINER_NAMES))
    parts = []
    for inner in draw(st.lists(st.sampled_from(_INNER_NAMES), min_size=1, max_size=5,
                                                unique=True)):
        parts.append(f"<{inner}>{draw(st.sampled_from(['oEVIL', 'event', '9', '']))}</{inner}>")
    if depth < 2 and draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), draw(container(depth + 1)))
    return f"<{name}>{''.join(parts)}</{name}>"


def _box_name(box: str) -> str:
    return box[1:box.index(">")]


@settings(FUZZ, max_examples=examples(600))
@given(flat=flattish(), data=st.data())
@example(flat=b"<xml><FromUserName>oREAL</FromUserName></xml>", data=None)
def test_nested_elements_never_change_a_top_level_field(flat: bytes, data: st.DataObject | None,
                                                        ) -> None:
    # Whatever containers hold, the root's direct children read as they do without them:
    # the containers add only their documented fields, under their path ("Box/Leaf").
    try:
        text = flat.decode("utf-8")
    except UnicodeDecodeError:
        return
    cut = text.rindex("</xml>") if "</xml>" in text else -1
    assume(cut > 0)
    extra = (data.draw(st.lists(container(), min_size=1, max_size=3, unique_by=_box_name))
             if data is not None
             else ["<Extra><FromUserName>oEVIL</FromUserName><MsgId>9</MsgId></Extra>"])
    nested = (text[:cut] + "".join(extra) + text[cut:]).encode()
    without = reading(tree_fields, flat)
    got = reading(tree_fields, nested)
    # The containers here are distinct and hold each field once: they refuse nothing.
    assert (got == "refused") == (without == "refused")
    if without == "refused":
        return
    assert isinstance(got, dict) and isinstance(without, dict)
    assert {k: v for k, v in got.items() if "/" not in k} == without
    assert all(k.split("/")[0] in ("ScanCodeInfo", "SendPicsInfo", "SendLocationInfo")
               for k in got if "/" in k)


@FAST
@given(content=_field_text, key=_field_text)
def test_generated_pushes_take_the_flat_reader_unless_their_text_needs_lxml(
        content: str, key: str) -> None:
    # push_xml drops what XML cannot carry and splits "]]>" over two CDATA sections.
    for text, body in ((content, push_xml("text", openid=OPENID, text=content)),
                       (key, push_xml("subscribe", openid=OPENID, event_key=key))):
        flat = flat_fields(body)
        assert (flat is not None) == ("\r" not in text and "]]>" not in _XML_INVALID.sub("", text))
        if flat is not None:
            assert flat == tree_fields(body)




@FAST
@given(content=_field_text, openid=st.from_regex(r"o[A-Za-z0-9_-]{27}", fullmatch=True),
       create_time=st.integers(0, 2**32), msg_id=st.integers(0, 2**63 - 1))
def test_text_push_round_trips_through_the_parser(content: str, openid: str, create_time: int,
                                                   msg_id: int) -> None:
    msg = parse_message(push_xml("text", openid=openid, text=content, create_time=create_time,
                                 msg_id=msg_id))
    assert isinstance(msg, TextMessage)
    assert msg.content == as_parsed(content)
    assert (msg.openid, msg.create_time, msg.msg_id) == (openid, create_time, str(msg_id))


@FAST
@given(event=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1,
                     max_size=30),
       key=_field_text)
def test_any_event_parses_never_an_error(event: str, key: str) -> None:
    # New Event values appear over time: they must parse into a generic event. (push_xml
    # reads a MsgType name such as "VIDEO" as a message, so those names are not events here.)
    assume(event.lower() not in {"text", "image", "voice", "video", "shortvideo", "location",
                                 "link"})
    msg = parse_message(push_xml(event, openid=OPENID, event_key=key))
    assert msg.msg_type == "event" and msg.event == event.lower()


# -- reply rendering ------------------------------------------------------------------------------



def any_text(max_size: int) -> st.SearchStrategy[str]:
    """Any str, lone surrogates too (a JSON escape of half an emoji): st.text leaves them out."""
    char = st.characters() | st.characters(categories=["Cs"])
    return st.lists(char, max_size=max_size).map("".join)


@FAST
@given(content=any_text(300), to_user=any_text(40),
       from_user=any_text(40))
def test_any_string_renders_to_xml_that_parses_back(content: str, to_user: str,
                                                     from_user: str) -> None:
    xml = render(TextReply(content), to_user=to_user, from_user=from_user, create_time=1)
    fields = parse_fields(xml)
    assert fields["Content"] == as_parsed(content)
    assert fields["ToUserName"] == as_parsed(to_user)
    assert fields["FromUserName"] == as_parsed(from_user)
    assert fields["MsgType"] == "text" and fields["CreateTime"] == "1"


@FAST
@given(content=any_text(300))
def test_encrypted_reply_round_trips_and_wechatpy_reads_it(content: str) -> None:
    xml = render(TextReply(content), to_user=OPENID, from_user="gh_x", create_time=1)
    wrapped = OURS.wrap_reply(xml, timestamp="1700000000", nonce="42")
    assert decode_reply(wrapped, crypto=OURS)["Content"] == as_parsed(content)
    theirs = THEIRS.decrypt_message(wrapped.decode(), parse_fields(wrapped)["MsgSignature"],
                                    "1700000000", "42")
    assert theirs == xml.decode()


# -- crypto ---------------------------------------------------------------------------------------

@FAST
@given(msg=st.binary(max_size=2000), prefix=st.binary(min_size=16, max_size=16))
def test_encrypt_then_decrypt_is_identity(msg: bytes, prefix: bytes) -> None:
    encrypt = OURS.encrypt(msg, random_prefix=prefix)
    assert len(base64.b64decode(encrypt)) % 32 == 0  # WeChat pads to 32, not 16
    assert OURS.decrypt(encrypt) == msg
    assert ROTATED.decrypt(encrypt) == msg


@FAST
@given(text=st.text(max_size=1000))
def test_wechatpy_cross_check_both_directions(text: str) -> None:
    data = text.encode()
    assert THEIR_PRP.decrypt(OURS.encrypt(data), SANDBOX_APP_ID) == text
    assert OURS.decrypt(THEIR_PRP.encrypt(data, SANDBOX_APP_ID).decode()) == data


@FAST
@given(text=st.text(max_size=500))
def test_an_old_key_still_decrypts_during_rotation(text: str) -> None:
    old = MessageCrypto(TOKEN, [OLD_KEY], SANDBOX_APP_ID)
    assert ROTATED.decrypt(old.encrypt(text.encode())) == text.encode()
    with pytest.raises(DecryptError):
        OURS.decrypt(old.encrypt(text.encode() + b"<xml/>"))


@FAST
@given(msg=st.binary(max_size=300),
       appid=st.text(st.characters(codec="ascii"), max_size=20).filter(
           lambda a: a != SANDBOX_APP_ID))
def test_another_appid_is_always_refused(msg: bytes, appid: str) -> None:
    theirs = MessageCrypto(TOKEN, [AES_KEY], appid)
    with pytest.raises(DecryptError):
        OURS.decrypt(theirs.encrypt(msg))


@FAST
@given(encrypt=st.text(max_size=400) | st.binary(max_size=400).map(
    lambda b: base64.b64encode(b).decode()))
def test_decryptor_raises_only_decrypt_error(encrypt: str) -> None:
    try:
        out = OURS.decrypt(encrypt)
    except DecryptError:
        return
    assert isinstance(out, bytes)


# -- a short fuzz run: mutations of valid pushes and ciphertexts ---------------------------------

_SEED_PUSHES = [push_xml(k, openid=OPENID, text="你好 <b>&amp;", event_key="qrscene_7",
                         create_time=1700000000, msg_id=1)
                for k in ("text", "image", "voice", "location", "link", "subscribe", "SCAN",
                          "pic_weixin", "TEMPLATESENDJOBFINISH")]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(
                [s.encode() for s in _SNIPPETS]))
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(i, min(len(data), i + 64)))
            data[j:j] = data[i:j]
    return bytes(data)


@FUZZ
@given(body=mutated(_SEED_PUSHES))
def test_fuzz_parser_with_mutated_pushes(body: bytes) -> None:
    try:
        msg = parse_message(body)
    except XMLError:
        return
    assert isinstance(msg, InboundMessage)


_SEED_CIPHERTEXTS = [OURS.encrypt(p).encode() for p in _SEED_PUSHES[:4]]


@FUZZ
@given(encrypt=mutated(_SEED_CIPHERTEXTS))
def test_fuzz_decryptor_with_mutated_ciphertexts(encrypt: bytes) -> None:
    try:
        plain = OURS.decrypt(encrypt.decode("latin-1"))
    except DecryptError:
        return
    # A mutation that survives padding and appid checks must still only parse or fail cleanly.
    with contextlib.suppress(XMLError):
        parse_message(plain)


# -- the whole route: any signed body is answered 200 or 4xx, never 5xx --------------------------

@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=mutated(_SEED_PUSHES) | st.binary(max_size=600) | xmlish())
async def test_fuzz_the_route_never_answers_5xx(client, body: bytes) -> None:
    push = sign_push(body, token=TOKEN, openid=OPENID)
    started = time.monotonic()
    r = await client.post("/wechat", params=push.params, content=body)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    assert time.monotonic() - started < 5.0  # WeChat's window: no body may stall the route
