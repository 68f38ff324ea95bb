"""`wxhook rules import` and `wxhook menu`: WeChat's documented sample payloads in, rules out;
the sandbox's console and menu API; the commands against a real sandbox process."""

import asyncio
import json
import subprocess

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.rules import parse_rules
from handlers.rules_import import console_to_rules
from service.tools.sandbox.samples import (
    AUTOREPLY_SAMPLE,
    SELFMENU_API_SAMPLE,
    SELFMENU_CONSOLE_SAMPLE,
)
from service.tools.simulate import decode_reply
from tests.support import SANDBOX_APP_ID, SANDBOX_SECRET, WXHOOK, sandbox_process, server_env


def _imported(auto=AUTOREPLY_SAMPLE, menu=SELFMENU_CONSOLE_SAMPLE):
    text, notes = console_to_rules(auto, menu)
    rules, problems = parse_rules(text.encode())
    assert problems == []
    return text, notes, rules


def test_autoreply_sample_becomes_rules():
    text, notes, rules = _imported()
    assert rules.subscribe.answer.replies[0].content == "Thanks for your attention!"
    assert rules.default.answer.replies[0].content == "Hello, this is autoreply!"
    assert rules.default.once_per == 3600  # as the console: once an hour
    news, voice, txt = rules.keywords
    assert (news.name, news.contain, news.answer.mode) == ("autoreply-news", ("news测试",),
                                                           "reply_all")
    assert [r.title for r in news.answer.replies] == ["it's news", "MULTI_NEWS"]
    assert news.answer.replies[0].description == "it's digest"
    assert news.answer.replies[0].url.startswith("http://mp.weixin.qq.com/s?__biz=")
    assert voice.answer.replies[0].media_id.startswith("NESsxgHEvAcg")
    assert (txt.contain, txt.answer.replies[0].content) == (("text测试",), "hello!text!")
    # The video reply is a URL: no media_id to answer with. Said in the file and on stderr.
    assert any("autoreply-video" in n and "URL" in n for n in notes)
    assert "# autoreply-video: reply_list_info[0]: not imported: a video given as a URL" in text


def test_equal_match_mode_is_kept():
    auto = {"keyword_autoreply_info": {"list": [{
        "rule_name": "hi", "reply_mode": "random_one",
        "keyword_list_info": [{"type": "text", "match_mode": "equal", "content": "Hi"},
                              {"type": "text", "match_mode": "contain", "content": "hello"}],
        "reply_list_info": [{"type": "img", "content": "MEDIA"}, {"type": "text", "content": "x"}],
    }]}}
    _, _, rules = _imported(auto, {})
    rule = rules.keywords[0]
    assert (rule.equal, rule.contain, rule.answer.mode) == (("hi",), ("hello",), "random_one")
    assert rule.answer.replies[0].media_id == "MEDIA"


def test_console_menu_buttons_become_clicks():
    _text, notes, rules = _imported()
    buttons = rules.menu["button"]
    assert [b.get("type") for b in buttons] == [None, "click", "click"]
    subs = buttons[0]["sub_button"]
    assert [(s["type"], s["name"]) for s in subs] == [
        ("view", "view_url"), ("click", "news"), ("click", "voice")]  # the video URL: dropped
    assert rules.clicks[buttons[1]["key"]].replies[0].content == "This is text!"
    assert rules.clicks[buttons[2]["key"]].replies[0].media_id.startswith("ax5Whs5d")
    assert rules.clicks[subs[1]["key"]].replies[0].title == "MULTI_NEWS"
    assert any("sub_button[2] (video): not imported" in n for n in notes)


def test_api_menu_sample_is_kept_as_is():
    _, notes, rules = _imported({}, SELFMENU_API_SAMPLE)
    assert rules.menu == {"button": [
        {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY_MUSIC"},
        {"name": "菜单", "sub_button": [
            {"type": "view", "name": "搜索", "url": "http://www.soso.com/"},
            {"type": "view", "name": "视频", "url": "http://v.qq.com/"},
            {"type": "click", "name": "赞一下我们", "key": "V1001_GOOD"}]}]}
    assert notes == [] and rules.clicks == {}


async def test_imported_rules_answer_through_wechat(tmp_path, make_app, make_settings, make_push,
                                                    crypto, sandbox):
    text, _, rules = _imported()
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    app = make_app(settings=make_settings(WXHOOK_RULES=str(path)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        async def ask(kind, aes=False, **kw):
            push = make_push(kind, aes=aes, **kw)
            r = await c.post("/wechat", params=push.params, content=push.body)
            return decode_reply(r.content, crypto=crypto)

        assert (await ask("subscribe"))["Content"] == "Thanks for your attention!"
        assert (await ask("text", text="some text测试 here", aes=True))["Content"] == "hello!text!"
        assert (await ask("text", text="news测试"))["Title"] == "it's news"
        for _ in range(100):
            if sandbox.sent:
                break
            await asyncio.sleep(0.02)
        assert [m["news"]["articles"][0]["title"] for m in sandbox.sent] == ["MULTI_NEWS"]
        key = rules.menu["button"][1]["key"]
        assert (await ask("CLICK", event_key=key))["Content"] == "This is text!"
        assert (await ask("text", text="anything"))["Content"] == "Hello, this is autoreply!"


async def _token(upstream):
    r = await upstream.post("http://sandbox/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": SANDBOX_APP_ID, "secret": SANDBOX_SECRET})
    return r.json()["access_token"]


async def test_sandbox_serves_console_and_menu_with_limits(upstream):
    q = {"access_token": await _token(upstream)}
    base = "http://sandbox/cgi-bin"
    assert (await upstream.get(f"{base}/get_current_autoreply_info", params=q)).json() == \
        AUTOREPLY_SAMPLE
    assert (await upstream.get(f"{base}/get_current_selfmenu_info", params=q)).json() == \
        SELFMENU_CONSOLE_SAMPLE
    assert (await upstream.get(f"{base}/menu/get", params=q)).json()["errcode"] == 46003
    four = {"button": [{"type": "click", "name": f"b{i}", "key": "K"} for i in range(4)]}
    assert (await upstream.post(f"{base}/menu/create", params=q, json=four)).json()[
        "errcode"] == 40016
    long_name = {"button": [{"type": "click", "name": "名" * 6, "key": "K"}]}
    assert (await upstream.post(f"{base}/menu/create", params=q, json=long_name)).json()[
        "errcode"] == 40018
    menu = {"button": [{"type": "click", "name": "About", "key": "ABOUT"}]}
    assert (await upstream.post(f"{base}/menu/create", params=q, json=menu)).json()[
        "errcode"] == 0
    assert (await upstream.get(f"{base}/menu/get", params=q)).json() == {"menu": menu}
    assert (await upstream.get(f"{base}/get_current_selfmenu_info", params=q)).json()[
        "selfmenu_info"] == menu
    assert (await upstream.get(f"{base}/menu/delete", params=q)).json()["errcode"] == 0
    assert (await upstream.get(f"{base}/menu/get", params=q)).json()["errcode"] == 46003
    assert (await upstream.get(f"{base}/menu/get")).json()["errcode"] == 41001


def _wxhook(base, *args, tmp_path):
    return subprocess.run([WXHOOK, *args], env={**server_env(base), "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_import_check_push_show_delete_against_a_sandbox_process(tmp_path):
    with sandbox_process() as base:
        done = _wxhook(base, "rules", "import", "--output", "rules.yaml", tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "autoreply-video" in done.stderr and "URL" in done.stderr
        assert _wxhook(base, "rules", "check", "rules.yaml", tmp_path=tmp_path).returncode == 0
        done = _wxhook(base, "menu", "push", "rules.yaml", tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        shown = _wxhook(base, "menu", "show", tmp_path=tmp_path)
        buttons = json.loads(shown.stdout)["menu"]["button"]
        assert [b["name"] for b in buttons] == ["button", "text", "photo"]
        assert buttons[1] == {"type": "click", "name": "text", "key": "CONSOLE_TEXT_3"}
        assert _wxhook(base, "menu", "delete", tmp_path=tmp_path).returncode == 0
        gone = _wxhook(base, "menu", "show", tmp_path=tmp_path)
        assert gone.returncode == 1
        assert "errcode 46003 (menu no exist)" in gone.stderr
        httpx.post(f"{base}/_sandbox/faults", json={"path": "/cgi-bin/menu/create",
                                                    "errcode": 48001})
        refused = _wxhook(base, "menu", "push", "rules.yaml", tmp_path=tmp_path)
        assert refused.returncode == 1
        assert "errcode 48001 (the account has no permission" in refused.stderr
        (tmp_path / "bad.yaml").write_text("menu: {button: []}\n")
        bad = _wxhook(base, "menu", "push", "bad.yaml", tmp_path=tmp_path)
        assert bad.returncode == 1 and "0 buttons" in bad.stderr
    assert SANDBOX_SECRET not in done.stderr + refused.stderr


def test_example_rules_are_valid():
    from tests.support import ROOT

    rules, problems = parse_rules((ROOT / "rules.example.yaml").read_bytes())
    assert problems == []
    assert rules.menu is not None and "ABOUT" in rules.clicks


@pytest.mark.slow
def test_dev_mode_answers_from_the_example_rules_through_simulate(tmp_path):
    from tests.support import ROOT, free_port, process

    port, sandbox_port = free_port(), free_port()
    env = {"WXHOOK_PROFILE_DB": str(tmp_path / "profiles.sqlite3")}
    args = [WXHOOK, "dev", "--port", str(port), "--sandbox-port", str(sandbox_port)]
    url = f"http://127.0.0.1:{port}/wechat"
    with process(args, env=env, ready_url=f"http://127.0.0.1:{port}/healthz",
                 log_path=tmp_path / "dev.log"):
        def simulate(*extra):
            done = subprocess.run([WXHOOK, "simulate", *extra, "--url", url],
                                  env={"PATH": "/usr/bin:/bin"}, cwd=ROOT,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert "We make hedgehog food." in simulate("click", "--event-key", "ABOUT")
        assert "Thanks for visiting our booth, 刺猬宝宝!" in simulate(
            "subscribe", "--event-key", "qrscene_fair2026")
        assert "We are open 9:00-17:00" in simulate("text", "--text", "hours", "--aes")
        assert "Call us on 010-0000-0000." in simulate("text", "--text", "contact")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz?verbose").json()
    assert ready["checks"]["rules"]["path"] == "rules.example.yaml"
    # What dev tells the owner to try is answered by a keyword rule, not the default reply.
    hints = (tmp_path / "dev.log").read_text()
    assert "replies from rules.example.yaml" in hints
    assert "simulate text --text hours" in hints


@pytest.mark.slow
def test_without_an_account_the_commands_use_the_dev_sandbox(tmp_path):
    done = subprocess.run([WXHOOK, "menu", "show"], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert "using the sandbox of `wxhook dev` at http://127.0.0.1:8001" in done.stderr
    assert "api.weixin.qq.com" not in done.stderr


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["text", "img", "news", "video", "voice", "click", "view", "equal"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "content", "value", "name", "key", "url", "list", "button",
                         "sub_button", "news_info", "selfmenu_info", "is_menu_open",
                         "keyword_autoreply_info", "keyword_list_info", "reply_list_info",
                         "rule_name", "match_mode", "reply_mode", "title",
                         "add_friend_autoreply_info", "is_add_friend_reply_open"]),
        inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_json, _json)
def test_any_answer_shape_imports_without_crashing(auto, menu):
    text, notes = console_to_rules(auto, menu)
    _, problems = parse_rules(text.encode())  # what the command reports, if anything
    assert all(isinstance(n, str) for n in notes)
    assert all(isinstance(p, str) for p in problems)


# Every string the console sends may hold anything JSON can carry: line breaks of every kind,
# control characters, lone surrogates.
_any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | \
    st.sampled_from(["a\nb", "a\rb", "a\x85b", "a\u2028b", "a\u2029b", "\x00", "\ud800",
                     "\ufffe", "x: [", "#", "'\""])
_reply = st.fixed_dictionaries({"type": st.sampled_from(["text", "img", "news", "video", "x"]),
                                "content": _any_text})
_rule = st.fixed_dictionaries({
    "rule_name": _any_text,
    "reply_mode": st.sampled_from(["reply_all", "random_one"]),
    "keyword_list_info": st.lists(st.fixed_dictionaries(
        {"type": st.just("text"), "match_mode": st.sampled_from(["equal", "contain"]),
         "content": _any_text}), max_size=2),
    "reply_list_info": st.lists(_reply, max_size=2)})
_button = st.fixed_dictionaries({"type": st.sampled_from(["text", "img", "click", "view"]),
                                 "name": _any_text, "value": _any_text, "key": _any_text})


@settings(max_examples=200, deadline=None)
@given(st.lists(_rule, max_size=3), _reply, st.lists(_button, max_size=3))
def test_any_console_text_gives_a_file_rules_check_reads(rules, welcome, buttons):
    auto = {"is_add_friend_reply_open": 1, "add_friend_autoreply_info": welcome,
            "is_autoreply_open": 1, "message_default_autoreply_info": welcome,
            "keyword_autoreply_info": {"list": rules}}
    menu = {"is_menu_open": 1, "selfmenu_info": {"button": buttons}}
    text, notes = console_to_rules(auto, menu)
    data = text.encode("utf-8")  # what `--output` writes
    yaml.safe_load(data)  # never invalid YAML, whatever the console held
    _, problems = parse_rules(data)
    assert not [p for p in problems if "not valid YAML" in p or "cannot be read" in p]
    for note in notes:  # one line each on the terminal too
        assert len(note.splitlines()) == 1 and note.encode("utf-8")
