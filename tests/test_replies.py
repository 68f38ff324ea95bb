"""Reply rendering: every type, CDATA-safe, addressed back to the sender."""

import json

import pytest
from lxml import etree

from wxhook.replies import (
    ImageReply,
    MusicReply,
    NewsReply,
    Reply,
    TextReply,
    TransferCustomerService,
    VideoReply,
    VoiceReply,
    cdata,
    decode,
    encode,
    render,
)


def fields(xml: bytes) -> dict[str, str]:
    root = etree.fromstring(xml)
    return {el.tag: (el.text or "") for el in root.iter() if len(el) == 0}


def test_text_reply_envelope():
    out = render(TextReply("你好"), to_user="oFollower", from_user="gh_acct",
                 create_time=1700000000)
    f = fields(out)
    assert f == {"ToUserName": "oFollower", "FromUserName": "gh_acct", "CreateTime": "1700000000",
                 "MsgType": "text", "Content": "你好"}


def test_cdata_terminator_inside_a_value_stays_valid():
    tricky = "a]]>b]]]>c<![CDATA[d"
    assert fields(render(TextReply(tricky), to_user="o", from_user="g"))["Content"] == tricky
    assert cdata("]]>").count("<![CDATA[") == 2


def test_characters_xml_forbids_are_dropped_not_fatal():
    out = render(TextReply("a\x00b\x0bc\td"), to_user="o", from_user="g")
    assert fields(out)["Content"] == "abc\td"


def test_media_and_card_replies():
    assert fields(render(ImageReply("m1"), to_user="o", from_user="g"))["MediaId"] == "m1"
    assert fields(render(VoiceReply("v1"), to_user="o", from_user="g"))["MsgType"] == "voice"
    v = fields(render(VideoReply("m", title="t", description="d"), to_user="o", from_user="g"))
    assert (v["Title"], v["Description"]) == ("t", "d")
    m = fields(render(MusicReply("th", title="s", music_url="u", hq_music_url="hq"),
                      to_user="o", from_user="g"))
    assert (m["ThumbMediaId"], m["MusicUrl"], m["HQMusicUrl"]) == ("th", "u", "hq")


def test_news_has_exactly_one_article():
    xml = render(NewsReply("T", description="D", pic_url="P", url="U"), to_user="o", from_user="g")
    root = etree.fromstring(xml)
    assert root.findtext("ArticleCount") == "1"
    assert len(root.findall("Articles/item")) == 1
    assert root.findtext("Articles/item/Url") == "U"


def test_transfer_customer_service_with_and_without_account():
    plain = etree.fromstring(render(TransferCustomerService(), to_user="o", from_user="g"))
    assert plain.findtext("MsgType") == "transfer_customer_service"
    assert plain.find("TransInfo") is None
    kf = etree.fromstring(render(TransferCustomerService("kf@acct"), to_user="o", from_user="g"))
    assert kf.findtext("TransInfo/KfAccount") == "kf@acct"


def test_custom_message_forms():
    assert TextReply("hi").custom_message("o1") == {
        "touser": "o1", "msgtype": "text", "text": {"content": "hi"}}
    assert NewsReply("t").custom_message("o1")["news"]["articles"][0]["title"] == "t"
    assert TransferCustomerService().custom_message("o1") is None


def test_video_and_music_have_customer_service_forms():
    from wxhook.replies import MusicReply, VideoReply

    assert VideoReply("M", "t", "d").custom_message("o1") == {
        "touser": "o1", "msgtype": "video",
        "video": {"media_id": "M", "thumb_media_id": "", "title": "t", "description": "d"}}
    assert MusicReply("TH", "t", "d", "https://m", "https://h").custom_message("o1") == {
        "touser": "o1", "msgtype": "music",
        "music": {"title": "t", "description": "d", "musicurl": "https://m",
                  "hqmusicurl": "https://h", "thumb_media_id": "TH"}}


# What XML 1.0 cannot carry, lone surrogates included (user/info and sns/userinfo answer a
# nickname cut inside an emoji as one; a handler may pass it on in any reply).
DIRTY = "Ann\ud800e\udc00\x01\x0b\ufffe\uffff \ud83d"
CLEAN = "Anne "


def _every_reply(text: str) -> list[Reply]:
    return [TextReply(text), ImageReply(text), VoiceReply(text), VideoReply(text, text, text),
            MusicReply(text, text, text, text, text), NewsReply(text, text, text, text),
            TransferCustomerService(text)]


@pytest.mark.parametrize("reply", _every_reply(DIRTY), ids=lambda r: type(r).__name__)
def test_text_xml_cannot_carry_is_cleaned_in_every_reply_type(reply: Reply) -> None:
    xml = render(reply, to_user="o\ud800", from_user="g\x00", create_time=1)
    f = fields(xml)  # lxml parses it back: valid UTF-8, valid XML
    assert (f["ToUserName"], f["FromUserName"]) == ("o", "g")
    texts = {v for k, v in f.items() if k not in _HEAD}
    assert texts == {CLEAN}
    # The dedup record and what a retry rebuilds from it: the same bytes.
    sent, record = encode(reply, to_user="o", from_user="g")
    assert fields(sent)["ToUserName"] == "o"
    assert decode(record, to_user="o", from_user="g") == sent
    # Late delivery posts the customer-service form as JSON in UTF-8.
    payload = reply.custom_message("o1")
    if payload is not None:
        form = payload[payload["msgtype"]]
        form = form["articles"][0] if "articles" in form else form
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
        assert {v for v in form.values() if v} == {CLEAN}


_HEAD = {"ToUserName", "FromUserName", "CreateTime", "MsgType", "ArticleCount"}
