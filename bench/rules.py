"""Keyword matching with hundreds of rules: microseconds per message, indexed and plain.

    .venv/bin/python bench/rules.py [--rules 500] [--loops 20000]

"indexed" is wxhook.rules_router.RuleBook (a dict for `equal`, one combined pattern that
rules out most messages for `contain` and `regex`); "plain" tries each rule in file order,
the obvious loop. Both must give the same answers; the table says what the index buys.
The whole push with these rules: `bench/inproc.py rules`.
"""

from __future__ import annotations

import argparse
import sys
import time

from wxhook.rules import Keyword, parse_rules
from wxhook.rules_regex import MAX_TEXT
from wxhook.rules_router import RuleBook


def rules_yaml(n: int) -> str:
    """n keyword rules: two `equal` words and a `contain` phrase each, a regex every tenth."""
    lines = ["keywords:"]
    for i in range(n):
        regex = f", regex: ['^code{i}-\\d+$']" if i % 10 == 0 else ""
        lines.append(f"  - {{name: r{i}, equal: [word{i}, 词{i}], contain: ['phrase {i}x']"
                     f"{regex}, replies: ['reply {i}']}}")
    return "\n".join(lines) + "\n"


def texts(n: int) -> dict[str, str]:
    """Messages that hit late, in the middle, and none at all."""
    last = n - 1
    return {
        "equal, last rule": f"word{last}",
        "contain, middle rule": f"please, phrase {n // 2}x now",
        "regex, late rule": f"code{(last // 10) * 10}-77",
        "no match, short": "hello there",
        "no match, 300 chars": "a long message with nothing of interest " * 7 + "at all.",
    }


def plain(keywords: tuple[Keyword, ...], text: str) -> Keyword | None:
    """The first rule in file order, trying every rule."""
    trimmed = text.strip()
    folded = trimmed.casefold()
    for k in keywords:
        if (folded in k.equal or any(w in folded for w in k.contain)
                or (len(trimmed) <= MAX_TEXT and any(r.search(trimmed) for r in k.regex))):
            return k
    return None


def per_call(fn: object, arg: str, loops: int) -> float:
    """Microseconds per call (best of 5)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(loops):
            fn(arg)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best / loops * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", type=int, default=500)
    p.add_argument("--loops", type=int, default=20000)
    a = p.parse_args()
    rules, problems = parse_rules(rules_yaml(a.rules).encode())
    assert rules is not None, problems
    book = RuleBook(rules)
    print(f"{a.rules} keyword rules, {a.loops} loops, best of 5 (us per message)")
    print(f"{'message':24} {'indexed':>9} {'plain':>9}")
    for label, text in texts(a.rules).items():
        indexed_rule, plain_rule = book.match(text), plain(rules.keywords, text)
        assert indexed_rule is plain_rule, (label, indexed_rule, plain_rule)
        fast = per_call(book.match, text, a.loops)
        slow = per_call(lambda t: plain(rules.keywords, t), text, max(1, a.loops // 10))
        print(f"{label:24} {fast:9.2f} {slow:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
