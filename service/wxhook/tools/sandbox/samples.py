"""WeChat's documented sample answers of the console-configuration APIs, as the sandbox's
console configuration (get_current_autoreply_info, get_current_selfmenu_info)."""

from __future__ import annotations

from typing import Any

_MULTI_NEWS: list[dict[str, Any]] = [
    {"title": "MULTI_NEWS", "author": "JIMZHENG", "digest": "text", "show_cover": 0,
     "cover_url": "http://mmbiz.qpic.cn/mmbiz/GE7et87vE9vicuCibqXsX9GPPLuEtBfXfK0HKuBIa1A1cypS0u"
                  "Y1wickv70iaY1gf3I1DTszuJoS3lAVLvhTcm9sDA/0",
     "content_url": "http://mp.weixin.qq.com/s?__biz=MjM5ODUwNTM3Ng==&mid=204013432&idx=1&sn=80"
                    "ce6d9abcb832237bf86c87e50fda15#rd",
     "source_url": ""},
    {"title": "MULTI_NEWS4", "author": "JIMZHENG",
     "digest": "MULTI_NEWSMULTI_NEWSMULTI_NEWSMULTI_NEWSMULTI_NEWSMULT", "show_cover": 1,
     "cover_url": "http://mmbiz.qpic.cn/mmbiz/GE7et87vE9vicuCibqXsX9GPPLuEtBfXfKbE8sWdt2DDcL0dMf"
                  "QWJWTVn1N8DxI0gcRmrtqBOuwQHeuPKmFLK0ZQ/0",
     "content_url": "http://mp.weixin.qq.com/s?__biz=MjM5ODUwNTM3Ng==&mid=204013432&idx=5&sn=b4"
                    "ef73a915e7c2265e437096582774af#rd",
     "source_url": ""},
]

AUTOREPLY_SAMPLE: dict[str, Any] = {
    "is_add_friend_reply_open": 1,
    "is_autoreply_open": 1,
    "add_friend_autoreply_info": {"type": "text", "content": "Thanks for your attention!"},
    "message_default_autoreply_info": {"type": "text", "content": "Hello, this is autoreply!"},
    "keyword_autoreply_info": {"list": [
        {"rule_name": "autoreply-news", "create_time": 1423028166, "reply_mode": "reply_all",
         "keyword_list_info": [{"type": "text", "match_mode": "contain", "content": "news测试"}],
         "reply_list_info": [
             {"type": "news", "news_info": {"list": [
                 {"title": "it's news", "author": "jim", "digest": "it's digest", "show_cover": 1,
                  "cover_url": "http://mmbiz.qpic.cn/mmbiz/GE7et87vE9vicuCibqXsX9GPPLuEtBfXfKbE8s"
                               "Wdt2DDcL0dMfQWJWTVn1N8DxI0gcRmrtqBOuwQHeuPKmFLK0ZQ/0",
                  "content_url": "http://mp.weixin.qq.com/s?__biz=MjM5ODUwNTM3Ng==&mid=203929886"
                                 "&idx=1&sn=628f964cf0c6d84c026881b6959aea8b#rd",
                  "source_url": "http://www.url.com"}]}},
             {"type": "news", "content": "KQb_w_Tiz-nSdVLoTV35Psmty8hGBulGhEdbb9SKs-o",
              "news_info": {"list": _MULTI_NEWS}},
         ]},
        {"rule_name": "autoreply-voice", "create_time": 1423027971, "reply_mode": "random_one",
         "keyword_list_info": [{"type": "text", "match_mode": "contain", "content": "voice测试"}],
         "reply_list_info": [{"type": "voice", "content": "NESsxgHEvAcg3egJTtYj4uG1PTL6iPhratdW"
                                                          "KDLAXYErhN6oEEfMdVyblWtBY5vp"}]},
        {"rule_name": "autoreply-text", "create_time": 1423027926, "reply_mode": "random_one",
         "keyword_list_info": [{"type": "text", "match_mode": "contain", "content": "text测试"}],
         "reply_list_info": [{"type": "text", "content": "hello!text!"}]},
        {"rule_name": "autoreply-video", "create_time": 1423027801, "reply_mode": "random_one",
         "keyword_list_info": [{"type": "text", "match_mode": "equal", "content": "video测试"}],
         "reply_list_info": [{"type": "video", "content": "http://61.182.133.153/vweixinp.tc.qq"
                              ".com/1007_114bcede9a2244eeb5ab7f76d951df5f.f10.mp4?vkey=7183E5C952"
                              "B16C3AB1991BA8138673DE1037CB82A29801A504B64A77F691BF9DF7AD054A9B7F"
                              "E683&sha=0&save=1"}]},
    ]},
}

# A menu made in the console: buttons that reply with content directly (text, img, voice,
# video, news with a `value`), which the API's menu has no types for.
SELFMENU_CONSOLE_SAMPLE: dict[str, Any] = {
    "is_menu_open": 1,
    "selfmenu_info": {"button": [
        {"name": "button", "sub_button": {"list": [
            {"type": "view", "name": "view_url", "url": "http://www.qq.com"},
            {"type": "news", "name": "news", "value": "KQb_w_Tiz-nSdVLoTV35Psmty8hGBulGhEdbb9SKs-o",
             "news_info": {"list": _MULTI_NEWS}},
            {"type": "video", "name": "video",
             "value": "http://61.182.130.30/vweixinp.tc.qq.com/1007_114bcede9a2244eeb5ab7f76d951d"
                      "f5f.f10.mp4?vkey=77A42D0C2015FBB0A3653D29C571B5F4BBF1D243FBEF17F09C24FF1F2F"
                      "22E30881BD350E360BC53F&sha=0&save=1"},
            {"type": "voice", "name": "voice",
             "value": "nTXe3aghlQ4XYHa0AQPWiQQbFW9RVtaYTLPC1PCQx11qc9UB6CiUPFjdkeEtJicn"},
        ]}},
        {"type": "text", "name": "text", "value": "This is text!"},
        {"type": "img", "name": "photo",
         "value": "ax5Whs5dsoomJLEppAvftBUuH7CgXCZGFbFJifmbUjnQk_ierMHY99Y5d2Cv14RD"},
    ]},
}

# A menu made through the API (menu/create), as get_current_selfmenu_info shows it.
SELFMENU_API_SAMPLE: dict[str, Any] = {
    "is_menu_open": 1,
    "selfmenu_info": {"button": [
        {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY_MUSIC"},
        {"name": "菜单", "sub_button": {"list": [
            {"type": "view", "name": "搜索", "url": "http://www.soso.com/"},
            {"type": "view", "name": "视频", "url": "http://v.qq.com/"},
            {"type": "click", "name": "赞一下我们", "key": "V1001_GOOD"},
        ]}},
    ]},
}
