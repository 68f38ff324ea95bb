"""Owner regexes run on RE2: linear time, refused with a reason when RE2 cannot express them."""

import re
import sys
import unicodedata

import pytest

from handlers.keywords import Keywords
from handlers.router import Router
from handlers.rules import parse_rules
from handlers.rules_regex import MAX_TEXT, RegexError, ascii_only, compile_regex
from handlers.rules_router import RuleBook
from handlers.testing import HandlerClient
from service.tools.cli import main

CATASTROPHIC = r"^(\w+\s?)*$"  # exponential time on a backtracking engine such as re


def _rules(text: str):
    rules, problems = parse_rules(text.encode(), name="r.yaml")
    assert rules is not None, problems
    # Checked before any search: on a backtracking engine the searches below would not end.
    assert all(type(p).__module__ == "re2" for k in rules.keywords for p in k.regex)
    return rules


def test_every_owner_regex_is_compiled_by_re2_not_the_stdlib():
    # RE2 runs in time linear in the text (Thompson NFA / DFA, never backtracking), so the
    # catastrophic shape costs one pass; this asserts RE2 is what runs, for both ways an owner
    # writes a regex: the rules file and @router.text.
    rules = _rules(f"keywords:\n  - {{name: a, regex: ['{CATASTROPHIC}', 'x'], replies: [a]}}\n")
    patterns = [*rules.keywords[0].regex]
    router = Router()
    router.text(regex=CATASTROPHIC)(lambda msg, ctx: None)
    patterns.append(compile_regex(CATASTROPHIC))
    assert patterns and all(type(p).__module__ == "re2" for p in patterns)
    assert not any(isinstance(p, re.Pattern) for p in patterns)
    # And what only RE2 accepts works (the stdlib refuses \p{...}).
    assert compile_regex(r"^\p{Han}+$").search("营业时间") is not None


@pytest.mark.parametrize("text", [
    "a" * 25 + "!",                          # the shape: no match, after 2^25 tries
    "word " * 800 + "!",                     # 4,001 characters, still no match
    "营业" * 40 + "?",
])
def test_the_catastrophic_pattern_answers_through_the_rules(text):
    book = RuleBook(_rules(f"keywords:\n  - {{name: slow, regex: ['{CATASTROPHIC}'], "
                           "replies: [a]}\n  - {name: other, contain: ['!', '?'], "
                           "replies: [b]}\n"))
    assert len(text) <= MAX_TEXT
    assert book.match(text).name == "other"       # right answer: the pattern does not match
    assert book.match(text[:-1]).name == "slow"    # and does without the last character


async def test_the_catastrophic_pattern_through_the_real_route(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(f"keywords:\n  - {{name: words, regex: ['{CATASTROPHIC}'], "
                    "replies: [only words]}\ndefault: {reply: something else, once_per: 0}\n")
    from handlers.defaults import default_router
    from handlers.rules_router import RulesAnswerer
    from handlers.rules_source import RulesSource
    from service.store.memory import MemoryStore

    source = RulesSource(str(path))
    assert type(source.current().keywords[0].regex[0]).__module__ == "re2"
    router = default_router("", rules=RulesAnswerer(source.current, store=MemoryStore(),
                                                    namespace="t:"))
    async with HandlerClient(router) as wx:
        assert (await wx.text("a" * 25 + "!"))["Content"] == "something else"
        assert (await wx.text("hello wide world"))["Content"] == "only words"


def test_a_text_over_the_cap_is_not_searched_by_regexes_but_by_words():
    book = RuleBook(_rules("keywords:\n  - {name: r, regex: ['x'], replies: [a]}\n"
                           "  - {name: w, contain: [x], replies: [b]}\n"))
    assert book.match("x" * MAX_TEXT).name == "r"
    assert book.match("x" * (MAX_TEXT + 1)).name == "w"


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(a)\1", "a back-reference"),
    (r"(?P<n>a)(?P=n)", "a back-reference"),
    (r"(?P<n>a)\k<n>", "a back-reference"),
    (r"foo(?=bar)", "a look-ahead or look-behind"),
    (r"foo(?!bar)", "a look-ahead or look-behind"),
    (r"(?<=a)b", "a look-ahead or look-behind"),
    (r"(?<!a)b", "a look-ahead or look-behind"),
    (r"(?>a+)b", "an atomic group or possessive quantifier"),
    (r"a++b", "an atomic group or possessive quantifier"),
    (r"x(", "RE2 cannot compile it"),
])
def test_rules_check_refuses_what_re2_cannot_run_with_its_place(tmp_path, capsys, pattern, why):
    path = tmp_path / "r.yaml"
    quoted = pattern.replace("'", "''")
    path.write_text("keywords:\n  - {name: first, regex: ['^ok$'], replies: [a]}\n"
                    "  - name: second\n    regex:\n      - '^fine$'\n"
                    f"      - '{quoted}'\n    replies: [b]\n")
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(path)])
    assert done.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}:6: keywords[1] (second).regex[1]: bad regex {pattern!r}: "
                   + out[0].split(f"bad regex {pattern!r}: ", 1)[1]]
    assert out[0].split(f"bad regex {pattern!r}: ", 1)[1].startswith(why)


def test_two_regex_rules_with_groups_both_match_in_order():
    # Joined into one pattern, the second rule's groups were renumbered behind the first's,
    # and its back-references pointed into the other rule.
    rules = _rules("keywords:\n"
                   "  - {name: range, regex: ['^(\\d+)-(\\d+)$'], replies: [a]}\n"
                   "  - {name: order, regex: ['^(x)?y$', '^order\\s+#?(?P<n>\\d+)(?:-(\\w+))?$',"
                   " '-(\\d+)$'], replies: [b]}\n")
    matcher = Keywords([(k.equal, k.contain, k.regex) for k in rules.keywords])
    hit = matcher.first("12-34")  # both rules match: the first in file order wins
    assert hit.index == 0 and hit.match.groups() == ("12", "34")
    hit = matcher.first("a-34")
    assert hit.index == 1 and hit.match.groups() == ("34",)
    hit = matcher.first(" ORDER #42-快递 ")
    assert hit.index == 1
    assert hit.match.group("n") == "42" and hit.match.groupdict() == {"n": "42"}
    assert hit.match.groups() == ("42", "快递") and hit.match.group(0) == "ORDER #42-快递"
    hit = matcher.first("y")
    assert hit.index == 1 and hit.match.groups() == (None,)
    assert RuleBook(rules).match("1-2").name == "range"


@pytest.fixture(scope="module")
def every_character():
    """Every assigned code point (RE2's tables may be of a newer Unicode than Python's)."""
    return "".join(chr(c) for c in range(sys.maxunicode + 1)
                   if unicodedata.category(chr(c)) not in ("Cn", "Cs"))


@pytest.mark.parametrize("python", [
    r"\w", r"\d", r"\s", r"\W", r"\D", r"\S", r"[\w]", r"[\d]", r"[\s]", r"[^\w\d]", r"[\w-]",
])
def test_unicode_classes_mean_what_they_meant_in_python(python, every_character):
    text = every_character
    runs = f"(?:{python})+"  # runs: far fewer matches to collect than characters
    want = set("".join(re.findall(runs, text, re.IGNORECASE)))  # the rules file's flag
    got = set("".join(compile_regex(runs).findall(text)))
    # One exception: U+0345, a combining mark RE2 case-folds to the letter iota.
    assert got ^ want <= {"\u0345"}
    assert not ascii_only(python)


@pytest.mark.parametrize(("pattern", "text"), [
    (r"^\w+$", "营业时间"), (r"[\u4e00-\u9fa5]+", "你好"), (r"^\d+$", "１２３"),
    (r"a\s+b", "a\u3000b"), (r"end\Z", "the end"), (r"\U0001F600", "😀"), (r"^HOURS$", "hours"),
])
def test_python_spellings_keep_working(pattern, text):
    assert compile_regex(pattern).search(text) is not None
    assert re.search(pattern, text, re.IGNORECASE) is not None  # as Python read them


def test_ascii_only_classes_are_a_warning_with_their_place(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("keywords:\n  - name: cat\n    regex: ['\\bcat\\b', '[\\W_]+']\n"
                    "    replies: [a]\n")
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", str(path)])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}:3: keywords[0] (cat).regex[0]: warning: \\b in ")
    assert lines[1].startswith(f"{path}:3: keywords[0] (cat).regex[1]: warning: \\W in ")
    assert lines[2].startswith(f"{path}: ok")


def test_router_text_refuses_a_back_reference_at_registration():
    with pytest.raises(RegexError, match="a back-reference"):
        Router().text(regex=r"(a)\1")
