"""Keyword matching, shared by the rules file and `@router.text`: which of several keyword sets,
in order, a text matches first.

A text matches a set when, trimmed and case-folded, it equals one of its `equal` words, holds
one of its `contain` words, or one of its regexes (RE2: handlers/rules_regex.py) finds
something in it. Hundreds of sets are matched without trying each in turn (bench/README.md,
"Rules files with hundreds of keywords"): `equal` is one dict
lookup; `contain` words are found all at once by one combined pattern of escaped words, then
looked up by what stands at each place it matched; regexes are run together by RE2's own
multi-pattern matcher (RE2::Set), which says which of them match in one pass of the text, and
only those sets' patterns are then searched, in order, for the match and its groups. Patterns
are never joined into one: their groups would be renumbered, and a later pattern's numbers
would point into an earlier one's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import re2

from wxhook.rules_regex import MAX_TEXT, Match, Pattern, options

KeywordSet = tuple[Iterable[str], Iterable[str], Sequence[Pattern]]  # equal, contain, regex


@dataclass(frozen=True, slots=True)
class Hit:
    """Which set matched, and the regex match when a regex decided it (its groups)."""

    index: int
    match: Match | None = None


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
        self._regexes = {i: regex for i, (_, _, regex) in enumerate(sets) if regex}
        self._owner = [i for i, patterns in self._regexes.items() for _ in patterns]
        self._any_regex = _matcher([p for patterns in self._regexes.values() for p in patterns])

    def first(self, text: str) -> Hit | None:
        """The first set, in order, that `text` matches."""
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
        if self._regexes and len(trimmed) <= MAX_TEXT:
            if self._any_regex is None:
                candidates: Iterable[int] = self._regexes
            else:
                candidates = sorted({self._owner[k] for k in self._any_regex.Match(trimmed) or ()})
            for i in candidates:
                if i >= best:
                    break
                for pattern in self._regexes[i]:
                    if (m := pattern.search(trimmed)) is not None:
                        return Hit(i, m)
        return Hit(best) if best < self._count else None


def _matcher(patterns: list[Pattern]) -> Any:
    """An RE2::Set of `patterns` (which of them match, in one pass), or None: try each."""
    if len(patterns) < 2:
        return None
    found = re2.Set.SearchSet(options())
    try:
        for p in patterns:
            found.Add(p.pattern)  # already RE2's syntax: compile_regex translated it
        found.Compile()  # once compiled, RE2 guarantees Match never runs out of memory
    except re2.error:
        return None
    return found
