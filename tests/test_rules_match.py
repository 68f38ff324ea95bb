"""The indexed keyword matcher answers exactly as trying every rule in file order would."""

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.rules import plain, rules_yaml, texts
from handlers.rules import Keyword, Rules
from handlers.rules_regex import compile_regex
from handlers.rules_replies import Answer
from handlers.rules_router import RuleBook
from service.replies import TextReply

# A tiny alphabet, so words overlap, nest and repeat (the hard cases for an index).
_word = st.text(alphabet="abAB 营", min_size=1, max_size=4).filter(lambda w: w.strip())
_rule = st.tuples(st.lists(_word, max_size=2), st.lists(_word, max_size=3),
                  st.lists(st.sampled_from(["^a", "b$", "(a)(b)?", "(?P<x>b)a", "(?i)ab", "营+",
                                            r"^\w+$"]), max_size=2))


def _book(specs):
    keywords = tuple(
        Keyword(f"r{i}", tuple(w.strip().casefold() for w in eq), tuple(w.casefold() for w in co),
                tuple(compile_regex(p) for p in rx), Answer((TextReply("x"),)))
        for i, (eq, co, rx) in enumerate(specs))
    return RuleBook(Rules(path="t", version="t", keywords=keywords)), keywords


@settings(max_examples=300, deadline=None)
@given(st.lists(_rule, max_size=12), st.text(alphabet="abAB 营\n", max_size=12))
def test_indexed_equals_plain(specs, text):
    book, keywords = _book(specs)
    assert book.match(text) is plain(keywords, text)


def test_overlapping_words_find_the_earlier_rule():
    book, keywords = _book([([], ["opening"], []), ([], ["pen"], []), ([], ["open"], [])])
    assert book.match("we are OPEN") is keywords[1]  # "pen" is in it, and comes first
    assert book.match("ope") is None
    assert book.match("opening hours") is keywords[0]
    assert book.match("a pen") is keywords[1]


def test_five_hundred_rules_match_as_plain():
    from handlers.rules import parse_rules

    rules, _ = parse_rules(rules_yaml(500).encode())
    book = RuleBook(rules)
    for text in texts(500).values():
        assert book.match(text) is plain(rules.keywords, text)


@settings(max_examples=200, deadline=None)
@given(_rule, st.text(alphabet="abAB 营\n", max_size=12))
def test_router_text_matches_as_a_one_rule_book(spec, text):
    from handlers.router import Router
    from service.messages import TextMessage

    equal, contain, regex = spec
    router = Router()
    router.text(equal=equal, contain=contain, regex=regex)(lambda msg, ctx: None)
    msg = TextMessage(to_user="gh", from_user="o", create_time=0, msg_type="text", msg_id="1",
                      raw={}, content=text)
    book, _ = _book([spec])
    want = book.match(text) is not None or not (equal or contain or regex)
    assert router.routes[0].accepts(msg) is want
