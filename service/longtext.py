"""Text longer than one WeChat message carries: where to cut it so a reader does not notice.

A passive text reply over 2,048 bytes (UTF-8) is not shown at all: the follower gets silence.
A longer text goes out as a head within the limit and the rest by customer-service message
(service/delivery.py), each cut where a reader would pause.
"""

from __future__ import annotations

import re
import unicodedata

PASSIVE_BYTES = 2048  # a passive text reply's Content; past it WeChat delivers nothing
# One customer-service text: WeChat documents no figure (45002 "content size out of limit"
# past it); parts no longer than a passive reply are what it has always taken.
CUSTOM_BYTES = 2048
ELLIPSIS = "…"
# A sentence ends at 。！？ or at . ! ? followed by a space (not in 3.14 or example.com).
_SENTENCE = re.compile(r"[。！？]|[.!?](?=\s)")
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")  # zero-width joiner, variation selectors


def size(text: str) -> int:
    """The bytes WeChat counts: UTF-8."""
    return len(text.encode())


def cut(text: str, limit: int) -> tuple[str, str]:
    """`text` as a head of at most `limit` bytes and the rest; head + rest == text.

    The head ends at a line break, else a sentence end, else a space, found in the second
    half of what fits (an earlier break would leave a short head and more messages), else
    after the last whole character that fits, never inside a character or an emoji sequence.
    """
    if size(text) <= limit:
        return text, ""
    if limit < 4:  # one character may take 4 bytes: a smaller part might hold none
        raise ValueError(f"a part of {limit} bytes may not hold one character")
    fits = len(text.encode()[:limit].decode(errors="ignore"))  # whole characters only
    at = _pause(text[:fits]) or _glyph_end(text, fits)
    while at < fits and text[at].isspace():  # spaces after the cut stay with the head
        at += 1
    return text[:at], text[at:]


def split(text: str, limit: int) -> list[str]:
    """`text` in parts of at most `limit` bytes each, in order, cut as `cut` does."""
    parts: list[str] = []
    while text:
        head, text = cut(text, limit)
        parts.append(head)
    return parts


def shortened(text: str, limit: int) -> str:
    """`text` cut to `limit` bytes with "…" at the end, for where the rest cannot follow."""
    if size(text) <= limit:
        return text
    head, _ = cut(text, limit - size(ELLIPSIS))
    return head.rstrip() + ELLIPSIS


def _pause(window: str) -> int:
    """Where a reader pauses last in the second half of `window` (0: nowhere)."""
    half = len(window) // 2
    line = window.rfind("\n")
    if line >= half:
        return line + 1
    sentence = 0
    for m in _SENTENCE.finditer(window, half):
        sentence = m.end()
    if sentence:
        return sentence
    for i in range(len(window) - 1, half - 1, -1):
        if window[i].isspace():
            return i + 1
    return 0


def _glyph_end(text: str, at: int) -> int:
    """`at`, moved back so that no combining mark or joined emoji is cut from its base."""
    start = at
    while at > start // 2 and (unicodedata.combining(text[at]) or text[at] in _JOINERS
                               or text[at - 1] == "\u200d"):
        at -= 1
    return at if at > start // 2 else start
