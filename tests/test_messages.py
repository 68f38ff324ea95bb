"""Every message and event type in the protocol page parses into its typed message."""

import dataclasses

import pytest

from service import xmldoc
from service.errors import XMLError
from service.messages import (
    EventMessage,
    ImageMessage,
    InboundMessage,
    JobFinishEvent,
    LinkMessage,
    LocationEvent,
    LocationMessage,
    LocationSelectEvent,
    MenuEvent,
    PicEvent,
    ScanCodeEvent,
    ScanEvent,
    SubscribeEvent,
    TextMessage,
    UnsubscribeEvent,
    VideoMessage,
    VoiceMessage,
    parse_message,
)

HEAD = ("<xml><ToUserName><![CDATA[gh_123]]></ToUserName>"
        "<FromUserName><![CDATA[oABC]]></FromUserName><CreateTime>1700000000</CreateTime>")


def xml(body: str) -> bytes:
    return (HEAD + body + "</xml>").encode()


def test_text_with_article_fields():
    m = parse_message(xml("<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 <b>]]>"
                          "</Content><MsgId>6054768590064713728</MsgId><MsgDataId>1</MsgDataId>"
                          "<Idx>2</Idx>"))
    assert isinstance(m, TextMessage)
    assert (m.content, m.msg_id, m.openid, m.to_user, m.create_time) == \
        ("你好 <b>", "6054768590064713728", "oABC", "gh_123", 1700000000)
    assert m.raw["Idx"] == "2"
    assert m.dedup_key() == "m:6054768590064713728"


def test_messages_are_frozen():
    m = parse_message(xml("<MsgType>text</MsgType><Content>x</Content><MsgId>1</MsgId>"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.content = "y"  # type: ignore[misc]


@pytest.mark.parametrize(("body", "cls", "expect"), [
    ("<MsgType>image</MsgType><PicUrl>http://p</PicUrl><MediaId>m1</MediaId><MsgId>1</MsgId>",
     ImageMessage, {"pic_url": "http://p", "media_id": "m1"}),
    ("<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format>"
     "<Recognition>腾讯</Recognition><MsgId>1</MsgId>",
     VoiceMessage, {"format": "amr", "recognition": "腾讯"}),
    ("<MsgType>video</MsgType><MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId><MsgId>1</MsgId>",
     VideoMessage, {"thumb_media_id": "t"}),
    ("<MsgType>shortvideo</MsgType><MediaId>m</MediaId><ThumbMediaId>t</ThumbMediaId>"
     "<MsgId>1</MsgId>", VideoMessage, {"msg_type": "shortvideo"}),
    ("<MsgType>location</MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803"
     "</Location_Y><Scale>20</Scale><Label>位置</Label><MsgId>1</MsgId>",
     LocationMessage, {"latitude": 23.134521, "longitude": 113.358803, "scale": 20,
                       "label": "位置"}),
    ("<MsgType>link</MsgType><Title>t</Title><Description>d</Description><Url>u</Url>"
     "<MsgId>1</MsgId>", LinkMessage, {"title": "t", "description": "d", "url": "u"}),
])
def test_message_types(body, cls, expect):
    m = parse_message(xml(body))
    assert type(m) is cls
    for k, v in expect.items():
        assert getattr(m, k) == v


def test_subscribe_plain_and_through_qr_code():
    plain = parse_message(xml("<MsgType>event</MsgType><Event>subscribe</Event>"))
    assert isinstance(plain, SubscribeEvent) and plain.scene is None
    qr = parse_message(xml("<MsgType>event</MsgType><Event>subscribe</Event>"
                           "<EventKey>qrscene_123123</EventKey><Ticket>TICKET</Ticket>"))
    assert isinstance(qr, SubscribeEvent)
    assert (qr.scene, qr.ticket, qr.event) == ("123123", "TICKET", "subscribe")
    assert qr.dedup_key() == "e:oABC:1700000000:subscribe:qrscene_123123"


@pytest.mark.parametrize(("body", "cls", "expect"), [
    ("<Event>unsubscribe</Event>", UnsubscribeEvent, {"event": "unsubscribe"}),
    ("<Event>SCAN</Event><EventKey>123</EventKey><Ticket>T</Ticket>", ScanEvent,
     {"event": "scan", "event_key": "123", "ticket": "T"}),
    ("<Event>LOCATION</Event><Latitude>23.1</Latitude><Longitude>113.3</Longitude>"
     "<Precision>119.385</Precision>", LocationEvent,
     {"latitude": 23.1, "longitude": 113.3, "precision": 119.385}),
    ("<Event>CLICK</Event><EventKey>MENU_1</EventKey>", MenuEvent,
     {"event": "click", "event_key": "MENU_1"}),
    ("<Event>VIEW</Event><EventKey>https://x</EventKey><MenuId>7</MenuId>", MenuEvent,
     {"event": "view", "menu_id": "7"}),
    ("<Event>view_miniprogram</Event><EventKey>pages/index</EventKey><MenuId>7</MenuId>",
     MenuEvent, {"event": "view_miniprogram", "event_key": "pages/index"}),
    ("<Event>scancode_waitmsg</Event><EventKey>k</EventKey><ScanCodeInfo><ScanType>qrcode"
     "</ScanType><ScanResult>1</ScanResult></ScanCodeInfo>", ScanCodeEvent,
     {"scan_type": "qrcode", "scan_result": "1"}),
    ("<Event>pic_photo_or_album</Event><EventKey>k</EventKey><SendPicsInfo><Count>2</Count>"
     "<PicList><item><PicMd5Sum>a1</PicMd5Sum></item><item><PicMd5Sum>b2</PicMd5Sum></item>"
     "</PicList></SendPicsInfo>", PicEvent, {"count": 2, "pic_md5s": ("a1", "b2")}),
    ("<Event>location_select</Event><EventKey>k</EventKey><SendLocationInfo><Location_X>23"
     "</Location_X><Location_Y>113</Location_Y><Scale>15</Scale><Label>L</Label>"
     "<Poiname>P</Poiname></SendLocationInfo>", LocationSelectEvent,
     {"latitude": 23.0, "longitude": 113.0, "scale": 15, "label": "L", "poiname": "P"}),
    ("<Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID><Status>success</Status>",
     JobFinishEvent, {"status": "success", "event": "templatesendjobfinish"}),
    ("<Event>MASSSENDJOBFINISH</Event><MsgID>1988</MsgID><Status>sendsuccess</Status>"
     "<TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount>"
     "<ErrorCount>5</ErrorCount>", JobFinishEvent,
     {"total_count": 100, "filter_count": 80, "sent_count": 75, "error_count": 5}),
])
def test_event_types(body, cls, expect):
    m = parse_message(xml("<MsgType>event</MsgType>" + body))
    assert type(m) is cls
    for k, v in expect.items():
        assert getattr(m, k) == v


def test_unknown_types_parse_generically():
    m = parse_message(xml("<MsgType>hologram</MsgType><Shape>cube</Shape><MsgId>9</MsgId>"))
    assert type(m) is InboundMessage and m.msg_type == "hologram" and m.raw["Shape"] == "cube"
    e = parse_message(xml("<MsgType>event</MsgType><Event>teleport</Event>"))
    assert type(e) is EventMessage and e.event == "teleport"


@pytest.mark.parametrize("body", [
    b"", b"not xml", b"<xml><unclosed></xml>", b"<notxml/>",
    b"<xml><ToUserName>a</ToUserName></xml>",                         # envelope fields missing
    (HEAD + "<MsgType>text</MsgType></xml>").replace("1700000000", "soon").encode(),
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b"<xml><ToUserName>&e;</ToUserName></xml>",
    "<xml><ToUserName>é</ToUserName></xml>".encode("latin-1"),       # not UTF-8
    b"<xml><ToUserName>\x01</ToUserName></xml>",                      # control character
])
def test_malformed_bodies_raise_xml_error(body):
    with pytest.raises(XMLError):
        parse_message(body)


def test_safe_mode_envelope_fast_path_takes_only_the_exact_shape():
    from service.xmldoc import safe_mode_encrypt
    enc = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655Hu+/=="
    good = (f"<xml>\n  <ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n"
            f"  <Encrypt><![CDATA[{enc}]]></Encrypt>\n</xml>\n").encode()
    assert safe_mode_encrypt(good) == enc
    for other in (
        good.replace(b"<xml>", b'<!DOCTYPE x [<!ENTITY e "y">]><xml>'),        # a DTD
        good.replace(b"</xml>", b"<MsgType>text</MsgType></xml>"),            # compatible
        good.replace(enc.encode(), b"&e;"),                                   # not base64
        good.replace(b"gh_10f6c3c3ac5a", b"]]><x/><![CDATA["),                # broken CDATA
        good + b"<xml/>",                                                     # trailing junk
    ):
        assert safe_mode_encrypt(other) is None


# -- the flat reader (the common push without lxml) -------------------------------------------

def test_flat_pushes_are_read_without_lxml():
    from service.tools.simulate import push_xml

    # parse_fields takes the flat reader's answer whenever it gives one: lxml is not asked.
    for body in (push_xml("text", openid="oFollower", text="x"),
                 push_xml("subscribe", openid="oFollower", event_key="qrscene_7")):
        assert xmldoc.flat_fields(body) is not None
    text = parse_message(push_xml("text", openid="oFollower", text="你好 <b>&amp; ]] >"))
    assert isinstance(text, TextMessage) and text.content == "你好 <b>&amp; ]] >"
    sub = parse_message(push_xml("subscribe", openid="oFollower", event_key="qrscene_7"))
    assert isinstance(sub, SubscribeEvent) and sub.scene == "7"
    # The official sample's layout: newlines and indentation between the fields.
    sample = xml("\n <MsgType><![CDATA[event]]></MsgType>\n <Event>LOCATION</Event>"
                 "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude>"
                 "<Precision>119.385040</Precision>\n")
    assert xmldoc.flat_fields(sample) is not None
    loc = parse_message(sample)
    assert isinstance(loc, LocationEvent) and loc.latitude == pytest.approx(23.137466)


def test_a_followers_text_may_mention_doctype_and_entities():
    # In CDATA these are characters the follower typed, not markup: they must get a reply.
    m = parse_message(xml("<MsgType>text</MsgType>"
                          "<Content><![CDATA[<!DOCTYPE x [<!ENTITY e 'y'>]> &e;]]></Content>"))
    assert isinstance(m, TextMessage) and m.content == "<!DOCTYPE x [<!ENTITY e 'y'>]> &e;"


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0" encoding="UTF-8"?>' + xml("<MsgType>text</MsgType>"),   # declaration
    b"\xef\xbb\xbf" + xml("<MsgType>text</MsgType>"),                             # BOM
    xml("<MsgType>text</MsgType><Content>a &amp; b</Content>"),                  # entity
    xml("<MsgType>text</MsgType><Content><![CDATA[x]]]]><![CDATA[>y]]></Content>"),  # split CDATA
    xml("<MsgType>text</MsgType><Content>line\r\nbreak</Content>"),               # \r normalised
    xml("<MsgType>text</MsgType><!-- note --><Content>c</Content>"),              # comment
    xml("<MsgType>text</MsgType><Content a='1'>c</Content>"),                     # attribute
    xml("<MsgType>event</MsgType><Event>x</Event><ScanCodeInfo><ScanType>q</ScanType>"
        "</ScanCodeInfo>"),                                                       # nesting
])
def test_anything_but_a_flat_push_goes_to_lxml_and_reads_the_same(body):
    assert xmldoc.flat_fields(body) is None
    expected = xmldoc.tree_fields(body)
    assert xmldoc.parse_fields(body) == expected and expected["ToUserName"] == "gh_123"


def test_the_flat_reader_stays_linear_on_hostile_bodies():
    # With a lazy CDATA pattern each section could swallow the next: 2^40 ways to fail.
    for body in (b"<xml>" + b"<a><![CDATA[x]]></a>" * 40 + b"<b>",
                 b"<xml><a><![CDATA[" + b"x]" * 100_000,
                 b"<xml>" + b"<a>" * 60_000):
        assert xmldoc.flat_fields(body) is None
    with pytest.raises(XMLError):
        parse_message(b"<xml>" + b"<a><![CDATA[x]]></a>" * 40 + b"<b>")


# WeChat's documented samples of the two job-finish events, as published (MsgID, capital D).
TEMPLATE_JOB_FINISH = """<xml>
<ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>
<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>
<CreateTime>1395658920</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>
<MsgID>200163836</MsgID>
<Status><![CDATA[success]]></Status>
</xml>"""
MASS_JOB_FINISH = """<xml>
<ToUserName><![CDATA[gh_3e8adccde292]]></ToUserName>
<FromUserName><![CDATA[oR5Gjjl_eiZoUpGozMo7dbBJ362A]]></FromUserName>
<CreateTime>1394524295</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[MASSSENDJOBFINISH]]></Event>
<MsgID>1988</MsgID>
<Status><![CDATA[sendsuccess]]></Status>
<TotalCount>100</TotalCount>
<FilterCount>80</FilterCount>
<SentCount>75</SentCount>
<ErrorCount>5</ErrorCount>
</xml>"""


@pytest.mark.parametrize(("sample", "msg_id"), [(TEMPLATE_JOB_FINISH, "200163836"),
                                                (MASS_JOB_FINISH, "1988")],
                         ids=["TEMPLATESENDJOBFINISH", "MASSSENDJOBFINISH"])
def test_job_finish_events_are_deduplicated_by_their_msgid(sample, msg_id):
    m = parse_message(sample.encode())
    assert isinstance(m, JobFinishEvent) and m.msg_id == msg_id
    assert m.dedup_key() == f"m:{msg_id}"
    # Two jobs finishing in the same second, from the same sender, are two pushes.
    other = parse_message(sample.replace(msg_id, msg_id + "1").encode())
    assert other.dedup_key() != m.dedup_key()


def test_messages_keep_msgid_with_a_small_d():
    m = parse_message(xml("<MsgType>text</MsgType><Content>x</Content><MsgId>123</MsgId>"))
    assert m.dedup_key() == "m:123"


def test_the_tree_reader_stays_linear_on_unclosed_cdata():
    import time

    for body in (b"\xef\xbb\xbf<xml>" + b"<![CDATA[" * 25_000,
                 b"\xef\xbb\xbf<xml>" + b"<a><![CDATA[x]]" * 15_000):
        started = time.monotonic()
        with pytest.raises(XMLError):
            xmldoc.tree_fields(body)
        # Linear takes milliseconds here, a reader that rescans from every unclosed section
        # ~20 s: a bound far from both, so a busy machine cannot make it fail.
        assert time.monotonic() - started < 2.0


# -- only the root's children are fields; a repeated one is refused -----------------------------

FORGED = ("<FromUserName>oEVIL</FromUserName><ToUserName>gh_evil</ToUserName>"
          "<MsgType>event</MsgType><MsgId>1</MsgId><Event>unsubscribe</Event>"
          "<EventKey>evil</EventKey><CreateTime>1</CreateTime><Content>evil</Content>")


@pytest.mark.parametrize("box", ["Extra", "ScanCodeInfo", "SendPicsInfo", "SendLocationInfo",
                                 "CopyrightCheckResult"])
@pytest.mark.parametrize(("flat", "key"), [
    (xml("<MsgType>text</MsgType><Content>hi</Content><MsgId>42</MsgId>"), "m:42"),
    (xml("<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_7</EventKey>"),
     "e:oABC:1700000000:subscribe:qrscene_7"),
], ids=["text", "event"])
def test_nested_elements_never_replace_a_top_level_field(box, flat, key):
    nested = flat.replace(b"</xml>", f"<{box}>{FORGED}<x>{FORGED}</x></{box}></xml>".encode())
    expected, got = parse_message(flat), parse_message(nested)
    assert got == expected and got.dedup_key() == expected.dedup_key() == key
    assert {k for k in got.raw if "/" not in k} == set(expected.raw)


@pytest.mark.parametrize("body", [
    xml("<MsgType>text</MsgType><MsgId>1</MsgId><MsgId>2</MsgId>"),
    xml("<MsgType>text</MsgType><FromUserName>oEVIL</FromUserName>"),
    xml("<MsgType>event</MsgType><ScanCodeInfo><ScanType>a</ScanType></ScanCodeInfo>"
        "<ScanCodeInfo><ScanType>b</ScanType></ScanCodeInfo>"),
    xml("<MsgType>event</MsgType><ScanCodeInfo><ScanType>a</ScanType><ScanType>b</ScanType>"
        "</ScanCodeInfo>"),
    xml("<MsgType>event</MsgType><SendPicsInfo><Count>1</Count><Count>2</Count>"
        "</SendPicsInfo>"),
])
def test_a_repeated_field_is_refused_by_both_readers(body):
    # WeChat never repeats a field: which copy would count is a forger's choice.
    for document in (body, b"\xef\xbb\xbf" + body):  # the flat reader, then lxml (a BOM)
        with pytest.raises(XMLError, match="repeated"):
            parse_message(document)
    with pytest.raises(XMLError, match="repeated"):
        xmldoc.tree_fields(body)
