"""Keyword matching, shared by the rules file and `@router.text`: which of several keyword sets,
in order, a text matches first.

A text matches a set when, trimmed and case-folded, it equals one of its `equal` words, holds
one of its `contain` words, or one of its regexes finds something in it. It stays fast with
hundreds of sets (bench/rules.py: 500 rules in 1-20 us instead of a few hundred): `equal` is
one dict lookup; `contain` words are found all at once by one combined pattern, then looked up
by what stands at each place it matched; regexes are first tried as one pattern, and one by
one only when that matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

KeywordSet = tuple[Iterable[str], Iterable[str], Sequence[re.Pattern[str]]]  # equal, contain, regex


class Keywords:
    """Keyword sets with their lookup tables, built once."""

    def __init__(self, sets: Sequence[KeywordSet]) -> None:
        self._count = len(sets)
        self._equal: dict[str, int] = {}
        self._word: dict[str, int] = {}
        for i, (equal, contain, _) in enumerate(sets):
            for word in equal:
                self._equal.setdefault(word.strip().casefold(), i)  # in order: the first wins
            for word in contain:
                self._word.setdefault(word.casefold(), i)
        # A lookahead finds every place where some word starts (even inside another one);
        # the words there are then the slices of the lengths in use that are known words.
        self._any_word = (re.compile("(?=" + "|".join(map(re.escape, self._word)) + ")")
                          if self._word else None)
        self._lengths = sorted({len(w) for w in self._word})
        self._regex_sets = [(i, regex) for i, (_, _, regex) in enumerate(sets) if regex]
        self._any_regex = _combined([r for _, rs in self._regex_sets for r in rs])

    def first(self, text: str) -> int | None:
        """The index of the first set, in order, that `text` matches."""
        trimmed = text.strip()
        folded = trimmed.casefold()
        best = self._equal.get(folded, self._count)
        if self._any_word is not None:
            for found in self._any_word.finditer(folded):
                at = found.start()
                for n in self._lengths:
                    i = self._word.get(folded[at:at + n])
                    if i is not None and i < best:
                        best = i
        if self._regex_sets and (self._any_regex is None
                                 or self._any_regex.search(trimmed) is not None):
            for i, patterns in self._regex_sets:
                if i >= best:
                    break
                if any(p.search(trimmed) for p in patterns):
                    best = i
                    break
        return best if best < self._count else None


def _combined(patterns: list[re.Pattern[str]]) -> re.Pattern[str] | None:
    """One pattern that matches when any does (None: no quick test; try each)."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    try:
        return re.compile("|".join(f"(?:{p.pattern})" for p in patterns), re.IGNORECASE)
    except re.error:  # e.g. numbered back-references or inline flags: no shortcut
        return None
