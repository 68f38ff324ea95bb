"""Reply rendering: every type, CDATA-safe, addressed back to the sender."""

from lxml import etree

from service.replies import (
    ImageReply,
    MusicReply,
    NewsReply,
    TextReply,
    TransferCustomerService,
    VideoReply,
    VoiceReply,
    cdata,
    render,
)


def fields(xml: bytes) -> dict[str, str]:
    root = etree.fromstring(xml)
    return {el.tag: (el.text or "") for el in root.iter() if len(el) == 0}


def test_text_reply_envelope():
    out = render(TextReply("你好"), to_user="oFollower", from_user="gh_acct", create_time=1700000000)
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
    from service.replies import MusicReply, VideoReply

    assert VideoReply("M", "t", "d").custom_message("o1") == {
        "touser": "o1", "msgtype": "video",
        "video": {"media_id": "M", "thumb_media_id": "", "title": "t", "description": "d"}}
    assert MusicReply("TH", "t", "d", "https://m", "https://h").custom_message("o1") == {
        "touser": "o1", "msgtype": "music",
        "music": {"title": "t", "description": "d", "musicurl": "https://m",
                  "hqmusicurl": "https://h", "thumb_media_id": "TH"}}
