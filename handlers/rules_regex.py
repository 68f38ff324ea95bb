r"""Owner regexes (the rules file's `regex`, `@router.text(regex=...)`) on RE2.

A backtracking engine (Python's `re`) takes exponential time on shapes like `^(\w+\s?)*$`,
and any follower can send the text that triggers it, blocking the worker past WeChat's 5 s.
RE2 runs in time linear in the text for every pattern; what it buys that with is what it
cannot express (back-references, look-around, atomic groups), refused with a plain reason.

Patterns keep their Python meaning where RE2 reads it differently: `\w`, `\d`, `\s` (and `\W`,
`\D`, `\S` outside `[...]`) match Unicode as in Python, not ASCII only, so `\w+` still matches
营业时间; `\uXXXX` is RE2's `\x{XXXX}`, `\Z` its `\z`. What cannot be kept (`\b`, `\B`, and
`\W`, `\D`, `\S` inside `[...]`: ASCII in RE2) is named by `ascii_only`, for a warning.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, cast

import re2

# Longer texts are not searched by regexes (equal/contain still apply): a keyword regex is
# for a short command, and this bounds each rule's cost per message whatever WeChat sends.
MAX_TEXT = 4096

# Python's classes for str patterns, as RE2 character-class items (checked code point by
# code point against `re` in tests/test_rules_regex.py).
_UNICODE = {"w": r"\p{L}\p{N}_", "d": r"\p{Nd}", "s": r"\s\x0b\x{1c}-\x{1f}\x{85}\p{Z}"}
_HEX = re.compile(r"u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})")
_POSIX = re.compile(r"\[:\^?[a-z]+:\]")

# What RE2 says, and what it means for someone who wrote a Python regex.
_ENGINE = "RE2, the linear-time engine wxhook matches regexes with, has none"
_WHY = (
    (re.compile(r"invalid escape sequence: \\[1-9k]|invalid perl operator: \(\?P(=|$)"),
     f"a back-reference: {_ENGINE}"),
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), f"a look-ahead or look-behind: {_ENGINE}"),
    (re.compile(r"invalid perl operator: \(\?>|bad repetition operator: [*+?}]\+"),
     "an atomic group or possessive quantifier: RE2 never backtracks, so leave it out"),
)


class Match(Protocol):
    """A successful search: `group`, `groups`, `groupdict` as with Python's re."""

    def group(self, *groups: int | str) -> Any:
        """The text of a group (by number or name); several give a tuple."""

    def __getitem__(self, group: int | str) -> Any:
        """`match[1]`, `match["name"]`: the text of one group."""

    def groups(self, default: Any = None) -> tuple[Any, ...]:
        """Every numbered group's text."""

    def groupdict(self, default: Any = None) -> dict[str, Any]:
        """Every named group's text."""

    def span(self, group: int | str = 0) -> tuple[int, int]:
        """Where a group matched (character offsets)."""


class Pattern(Protocol):
    """A compiled owner regex."""

    @property
    def pattern(self) -> str:
        """The pattern as RE2 reads it."""

    @property
    def groups(self) -> int:
        """How many numbered groups it has."""

    @property
    def groupindex(self) -> dict[str, int]:
        """Named groups and their numbers."""

    def search(self, text: str) -> Match | None:
        """The first match anywhere in `text`, or None."""


class RegexError(ValueError):
    """A pattern RE2 cannot run; the message says why, for an owner."""


def options() -> Any:
    """RE2 options for owner regexes: case-insensitive (as the rules file promises)."""
    opts = re2.Options()
    opts.case_sensitive = False
    opts.log_errors = False  # else RE2 writes each refused pattern to stderr itself
    return opts


def to_re2(pattern: str) -> str:
    """`pattern` with Python's Unicode classes and \\u escapes spelled for RE2."""
    out: list[str] = []
    i, n = 0, len(pattern)
    class_from = -1  # where the current [...] began (its first item), -1 outside one
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e == "Q":  # RE2's literal text, up to \E: nothing inside is an escape
                end = pattern.find("\\E", i + 2)
                end = n if end < 0 else end + 2
                out.append(pattern[i:end])
                i = end
                continue
            if e in _UNICODE:
                out.append(_UNICODE[e] if class_from >= 0 else f"[{_UNICODE[e]}]")
            elif e.lower() in _UNICODE and class_from < 0:
                out.append(f"[^{_UNICODE[e.lower()]}]")
            elif e == "Z":  # Python's end of text is RE2's \z (RE2 has no \Z)
                out.append("\\z")
            elif (hexa := _HEX.match(pattern, i + 1)) is not None:
                out.append(f"\\x{{{hexa.group(1) or hexa.group(2)}}}")
                i = hexa.end()
                continue
            else:
                out.append(c + e)
            i += 2
            continue
        if class_from < 0 and c == "[":
            class_from = i + 2 if pattern.startswith("[^", i) else i + 1
            out.append(pattern[i:class_from])
            i = class_from
            continue
        if class_from >= 0 and (posix := _POSIX.match(pattern, i)) is not None:
            out.append(posix.group())
            i = posix.end()
            continue
        if class_from >= 0 and c == "]" and i > class_from:  # a ] first in [...] is literal
            class_from = -1
        out.append(c)
        i += 1
    return "".join(out)


def compile_regex(pattern: str) -> Pattern:
    """`pattern` compiled by RE2, case-insensitive; RegexError says why RE2 cannot run it."""
    try:
        return cast(Pattern, re2.compile(to_re2(pattern), options()))
    except re2.error as exc:
        raw = exc.args[0] if exc.args else ""
        said = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        why = next((text for shape, text in _WHY if shape.search(said)), None)
        raise RegexError(f"{why} ({said})" if why else f"RE2 cannot compile it: {said}") from None


def ascii_only(pattern: str) -> list[str]:
    """The escapes in `pattern` that RE2 reads as ASCII only, where Python reads Unicode."""
    found: list[str] = []
    translated = to_re2(pattern)
    for m in re.finditer(r"\\Q.*?(?:\\E|$)|\\(.)", translated, re.DOTALL):
        if m.group(1) in ("b", "B", "W", "D", "S") and f"\\{m.group(1)}" not in found:
            found.append(f"\\{m.group(1)}")
    return found
