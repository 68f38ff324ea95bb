"""The rules file: what is accepted, and one line per problem with its place."""

import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wxhook.menu import MENU_ERRORS
from wxhook.replies import ImageReply, MusicReply, NewsReply, TextReply, VideoReply, VoiceReply
from wxhook.rules import RulesError, load_rules, parse_rules
from wxhook.tools.cli import main


def _problems(text):
    rules, problems = parse_rules(text.encode(), name="r.yaml")
    assert (rules is None) == bool(problems)
    return problems


def test_the_issue_example_is_valid(tmp_path):
    from tests.test_rules_router import RULES

    path = tmp_path / "r.yaml"
    path.write_text(RULES + "menu:\n  button:\n    - {type: click, name: About, key: ABOUT}\n"
                    "    - name: More\n      sub_button: [{type: view, name: Website, "
                    "url: 'https://example.com'}]\n")
    rules = load_rules(path)
    assert [k.name for k in rules.keywords][:2] == ["hours", "shadowed"]
    assert rules.keywords[0].equal == ("hours", "营业时间")
    assert rules.default is not None and rules.default.once_per == 3600
    assert rules.subscribe is not None and set(rules.subscribe.scenes) == {"fair2026"}
    assert rules.menu is not None and rules.clicks["ABOUT"].replies == (
        TextReply("We make hedgehog food."),)
    assert re.fullmatch(r"[0-9a-f]{12}", rules.version)


def test_every_reply_form():
    rules, problems = parse_rules(b"""
keywords:
  - equal: x
    replies:
      - plain
      - text: t
      - news: [{title: T, description: D, url: 'https://u', picurl: 'https://p'}]
      - news: {title: T2}
      - image: {media_id: I}
      - voice: {media_id: V}
      - video: {media_id: M, title: VT, description: VD}
      - music: {thumb_media_id: TH, title: S, musicurl: 'https://m', hqmusicurl: 'https://h'}
""")
    assert problems == []
    assert rules.keywords[0].answer.replies == (
        TextReply("plain"), TextReply("t"), NewsReply("T", "D", "https://p", "https://u"),
        NewsReply("T2"), ImageReply("I"), VoiceReply("V"), VideoReply("M", "VT", "VD"),
        MusicReply("TH", "S", "", "https://m", "https://h"))
    assert rules.keywords[0].name == "keyword-1"


@pytest.mark.parametrize(("text", "expected"), [
    ("keywords:\n  - name: r\n    regex: ['x(']\n    replies: [a]\n",
     r"r.yaml:3: keywords\[0\] \(r\).regex\[0\]: bad regex 'x\(': RE2 cannot compile it: "
     r"missing \)"),
    ("keywords:\n  - name: r\n    equal: a\n    replies: [{gif: {media_id: x}}]\n",
     r"r.yaml:4: keywords\[0\] \(r\).replies\[0\].gif: unknown reply type 'gif'"),
    ("keywords:\n  - name: r\n    equal: a\n    replies: []\n",
     r"r.yaml:4: keywords\[0\] \(r\).replies: empty"),
    ("keywords:\n  - name: r\n    equal: a\n",
     r"r.yaml:2: keywords\[0\] \(r\).replies: missing"),
    ("keywords:\n  - name: r\n    equal: a\n    replies: ['  ']\n",
     r"r.yaml:4: keywords\[0\] \(r\).replies\[0\]: empty reply"),
    ("keywords:\n  - name: r\n    replies: [a]\n", r"r.yaml:2: keywords\[0\] \(r\): needs equal"),
    ("keywords:\n  - name: r\n    equal: a\n    mode: all\n    replies: [a]\n",
     r"r.yaml:4: keywords\[0\] \(r\).mode: must be one of random_one, reply_all"),
    ("keywords:\n  - name: r\n    equal: a\n    replies: [{image: {}}]\n",
     r"r.yaml:4: keywords\[0\] \(r\).replies\[0\].image.media_id: missing"),
    ("keywords:\n  - {name: r, equal: a, replies: [a]}\n  - {name: r, equal: b, replies: [b]}\n",
     r"r.yaml:3: keywords\[1\] \(r\).name: another rule has this name"),
    ("default:\n  reply: hi\n  once_per: -1\n", r"r.yaml:3: default.once_per: must be"),
    ("subscribe:\n  reply: hi\n  anonymous: 'Hi {nickname}'\n",
     r"r.yaml:3: subscribe.anonymous: .*cannot contain \{nickname\}"),
    ("clicks:\n  ABOUT: []\n", r"r.yaml:2: clicks.ABOUT: empty"),
    ("greeting: hi\n", r"r.yaml:1: greeting: unknown section"),
    ("default: {reply: a}\ndefault: {reply: b}\n", r"r.yaml:2: default: given twice"),
    ("keywords: [\n", r"r.yaml:2: not valid YAML"),
    ("- a\n- b\n", r"r.yaml:1: the file must be a mapping"),
])
def test_one_line_per_problem_with_its_place(text, expected):
    problems = _problems(text)
    assert len(problems) == 1, problems
    assert re.match(expected, problems[0]), problems[0]


MENU_BAD = """\
menu:
  button:
    - {{type: click, name: "关于我们公司的", key: A}}
    - name: More
      sub_button:
        - {{type: view, name: a, url: 'https://e.com'}}
        - {{type: view, name: b, url: 'https://e.com'}}
        - {{type: view, name: c, url: 'https://e.com'}}
        - {{type: view, name: d, url: 'https://e.com'}}
        - {{type: view, name: e, url: 'https://e.com'}}
        - {{type: view, name: f, url: 'https://e.com'}}
    - {{type: click, name: "{}", key: "{}"}}
    - {{type: view, name: url, url: "https://e.com/{}"}}
""".format("名" * 21, "k" * 129, "u" * 1020)


def test_menu_limits_as_wechat_documents_them():
    problems = _problems(MENU_BAD)
    text = "\n".join(problems)
    assert "r.yaml:3: menu.button[0].name: 21 bytes; at most 16" in text
    assert "r.yaml:5: menu.button[1].sub_button: 6 sub-buttons; WeChat allows 1 to 5" in text
    assert "r.yaml:12: menu.button[2].name: 63 bytes; at most 16" in text
    assert "r.yaml:12: menu.button[2].key: 129 bytes; at most 128" in text
    assert "r.yaml:13: menu.button[3].url: 1034 bytes; at most 1024" in text
    assert "menu.button: 4 buttons; WeChat allows 1 to 3" in text


def test_menu_names_at_the_limits_are_accepted():
    menu = ("menu:\n  button:\n    - {{type: click, name: '{}', key: '{}'}}\n"
            "    - name: m\n"
            "      sub_button: [{{type: view, name: '{}', url: 'https://e.com/{}'}}]\n").format(
        "名" * 5 + "a", "k" * 128, "名" * 20, "u" * (1024 - len("https://e.com/")))
    assert _problems(menu) == []


def test_check_command_good_missing_broken(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("keywords: [{name: hours, equal: hours, replies: [9-17]}]\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("keywords:\n  - name: hours\n    regex: ['(']\n    replies: [{gif: x}]\n")
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(good)])
    assert done.value.code == 0
    assert "ok" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(tmp_path / "missing.yaml")])
    assert done.value.code == 1
    assert "missing.yaml: cannot read: No such file or directory" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(broken)])
    assert done.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{broken}:3: keywords[0] (hours).regex")
    assert ": bad regex" in lines[0]
    assert lines[1].startswith(f"{broken}:4: keywords[0] (hours).replies[0].gif: unknown reply")


def test_check_command_reports_a_file_that_breaks_the_parser_in_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * (sys.getrecursionlimit() + 100))  # PyYAML: RecursionError
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(deep)])
    assert done.value.code == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{deep}:1: cannot be read as rules: RecursionError"]
    assert "Traceback" not in captured.err


def test_load_rules_raises_with_every_problem(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("keywords:\n  - {regex: ['(']}\n  - {equal: a, replies: []}\n")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert len(err.value.problems) == 3  # bad regex and no replies; empty replies


def test_clicks_scenes_and_default_take_every_answer_form():
    rules, problems = parse_rules(b"""
subscribe: {scenes: {fair: [a, b], 42: {mode: reply_all, replies: [c, {image: {media_id: I}}]}}}
default: [x, y]
clicks:
  ONE: plain
  ALL: {mode: reply_all, replies: [a, {text: b}]}
  NEWS: {news: {title: T}}
""")
    assert problems == []
    assert rules.subscribe.answer is None and set(rules.subscribe.scenes) == {"fair", "42"}
    assert rules.subscribe.scenes["42"].mode == "reply_all"
    assert rules.default.answer.replies == (TextReply("x"), TextReply("y"))
    assert rules.clicks["ALL"].mode == "reply_all"
    assert rules.clicks["ALL"].replies == (TextReply("a"), TextReply("b"))
    assert rules.clicks["NEWS"].replies == (NewsReply("T"),)
    assert rules.clicks["ONE"].mode == "random_one"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["click", "view", "miniprogram", "media_id"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["button", "sub_button", "type", "name", "key", "url", "appid",
                         "pagepath", "media_id"]), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_menu_check_takes_any_shape(menu):
    from wxhook.menu import menu_problems

    for problem in menu_problems(menu):
        assert problem.errcode in MENU_ERRORS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_problem_list_never_a_crash(text):
    rules, problems = parse_rules(text.encode())
    assert (rules is None) == bool(problems)


def test_words_and_keys_stay_the_text_written():
    # YAML 1.1 would read these as True, False, True, 540, 83 and a date.
    rules, problems = parse_rules(b"keywords: [{equal: [yes, no, On, 9:00, 0123, 2026-01-01], "
                                  b"replies: [ok]}]\nclicks: {ON: a, OFF: b, 7: c}\n"
                                  b"default: {reply: x, once_per: 60}\n")
    assert problems == []
    assert rules.keywords[0].equal == ("yes", "no", "on", "9:00", "0123", "2026-01-01")
    assert set(rules.clicks) == {"ON", "OFF", "7"}
    assert rules.default.once_per == 60
