"""The text of an untrusted XML body, in an encoding WeChat can send, chosen before decoding.

Python knows about a hundred codecs and some are no text encoding a push can be in: punycode
decodes in quadratic time, so one large body holds the event loop (and no deadline fires
while it does); base64, zlib and rot13 are not text at all. WeChat sends UTF-8; the
others allowed here are what a proxy or tool in front of wxhook may re-encode a push into.

A body may name its encoding three ways: a byte-order mark, its first bytes (NULs in UTF-16
and UTF-32) and its XML declaration. All three are read from the bytes without decoding
anything (the declaration is ASCII in every layout accepted here), must agree, and must name
an encoding on the list; only then is the body decoded, once. What libxml2 gets is UTF-8
without a declaration, so it never chooses an encoding itself; HTTP's charset is never read.
"""

from __future__ import annotations

import codecs
import re

from .errors import XMLError

# Labels as senders write them, compared as codecs.lookup compares names (case-insensitive,
# "_" as "-"), but only these: IANA's names, Python's and Java's spellings of them ("utf8",
# "utf_16_le", "ISO8859_1"), and cp936, what Python on a Chinese Windows names the locale's
# encoding. Aliases nobody writes in a declaration ("u8", "chinese", "l1") are refused.
_LABELS: dict[bytes, str] = {
    b"utf-8": "utf-8", b"utf8": "utf-8",
    b"utf-16": "utf-16", b"utf-16le": "utf-16-le", b"utf-16-le": "utf-16-le",
    b"utf-16be": "utf-16-be", b"utf-16-be": "utf-16-be",
    b"utf-32": "utf-32", b"utf-32le": "utf-32-le", b"utf-32-le": "utf-32-le",
    b"utf-32be": "utf-32-be", b"utf-32-be": "utf-32-be",
    b"gb18030": "gb18030",
    # GB2312 is read as GBK, its superset, as browsers and Windows do: senders that say
    # GB2312 often use GBK's characters (镕, 堃), and both decode in linear time.
    b"gbk": "gbk", b"cp936": "gbk", b"gb2312": "gbk",
    b"big5": "big5",
    b"us-ascii": "ascii", b"ascii": "ascii",
    b"iso-8859-1": "latin-1", b"iso8859-1": "latin-1", b"latin1": "latin-1", b"latin-1": "latin-1",
}
# A mark names the codec; the UTF-32 LE mark begins with the UTF-16 LE one, so it comes first.
_MARKS = ((codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF32_LE, "utf-32-le"),
          (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"),
          (codecs.BOM_UTF16_LE, "utf-16-le"))
# Bytes per character in the wide layouts, and which of them holds an ASCII character.
_UNITS = {"utf-16-le": (2, 0), "utf-16-be": (2, 1), "utf-32-le": (4, 0), "utf-32-be": (4, 3)}
# What a declaration may say in each layout: "UTF-16" fits either byte order.
_FITS = {"utf-8": {"utf-8"}, "utf-16-le": {"utf-16", "utf-16-le"},
         "utf-16-be": {"utf-16", "utf-16-be"}, "utf-32-le": {"utf-32", "utf-32-le"},
         "utf-32-be": {"utf-32", "utf-32-be"}}
_WIDE = {"utf-16", "utf-32", *_UNITS}

# XML 1.0's XMLDecl, exactly (S, Eq, quotes of either kind, EncName); after it only
# whitespace and the <xml> root: nothing else may come first (no DTD, comment or PI).
_S = rb"[ \t\r\n]"
_EQ = rb"[ \t\r\n]*=[ \t\r\n]*"
_DECLARATION = re.compile(
    rb"<\?xml" + _S + rb"+version" + _EQ + rb"(?P<vq>[\"'])1\.[0-9]{1,4}(?P=vq)"
    rb"(?:" + _S + rb"+encoding" + _EQ
    + rb"(?P<eq>[\"'])(?P<enc>[A-Za-z][A-Za-z0-9._-]{0,39})(?P=eq))?"
    rb"(?:" + _S + rb"+standalone" + _EQ + rb"(?P<sq>[\"'])(?:yes|no)(?P=sq))?"
    + _S + rb"*\?>")
_ROOT = re.compile(_S + rb"*<xml[ \t\r\n/>]")
# How far into a wide body the declaration and root are looked for, in characters: a
# declaration is under a hundred, and nobody puts hundreds of blank lines before the root.
_HEAD_CHARS = 512

ROOT_FIRST = "the document must start with the <xml> root (no DTD, no prolog)"


def text_of(body: bytes) -> str:
    """The body as text from its <xml> root on (mark and declaration dropped); XMLError,
    before anything is decoded, unless it starts with the root and its encoding is allowed."""
    layout, skip = _layout(body)
    width, low = _UNITS.get(layout or "", (1, 0))
    if width == 1:
        view, start, window = body, skip, b""
    else:  # the ASCII characters of a wide layout, one byte each: no decoding needed
        window = body[skip:skip + width * _HEAD_CHARS]
        window = window[:len(window) - len(window) % width]
        view, start = window[low::width], 0
    declaration = _DECLARATION.match(view, start)
    if declaration is None and view.startswith(b"<?xml", start):
        raise XMLError("malformed XML (declaration)")
    codec = _codec(layout, declaration["enc"] if declaration else None)
    root = _ROOT.match(view, declaration.end() if declaration else start)
    # In a wide layout the declaration and root were read one byte a character: each must
    # be that character (a label read from U+0100-U+FFFF is no label, and is refused here).
    if root is None or (width > 1 and not _ascii(window, width, low, root.end())):
        raise XMLError(ROOT_FIRST)
    try:
        text = (body[skip:] if skip else body).decode(codec)
    except UnicodeError:  # bytes the codec cannot read (UnicodeDecodeError, or its parent)
        raise XMLError("malformed XML (encoding)") from None
    return text[declaration.end() - start:] if declaration else text


def _ascii(window: bytes, width: int, low: int, chars: int) -> bool:
    """Whether the first `chars` units of a wide layout hold one ASCII byte each and zeros
    (U+013C is not "<")."""
    end = chars * width
    return all(window[i:end:width].count(0) == chars for i in range(width) if i != low)


def _layout(body: bytes) -> tuple[str | None, int]:
    """The codec a mark or the first bytes name (None: an ASCII-compatible one), and the
    mark's length."""
    for mark, codec in _MARKS:
        if body.startswith(mark):
            return codec, len(mark)
    head = body[:4]
    if head == b"\x00\x00\x00<":
        return "utf-32-be", 0
    if head == b"<\x00\x00\x00":
        return "utf-32-le", 0
    if len(head) >= 2 and (head[0] == 0) != (head[1] == 0):  # one NUL in two: UTF-16
        return ("utf-16-be" if head[0] == 0 else "utf-16-le"), 0
    return None, 0


def _codec(layout: str | None, label: bytes | None) -> str:
    """The codec to decode with: the layout's, or the declaration's, which must be allowed
    and agree with the layout."""
    declared, name = None, (label or b"").decode("ascii")  # EncName: ASCII, 40 at most
    if label is not None:
        declared = _LABELS.get(label.lower().replace(b"_", b"-"))
        if declared is None:
            raise XMLError(f"{name!r} is not an encoding WeChat sends (UTF-8; also UTF-16, "
                           "UTF-32, GB18030, GBK, GB2312, Big5, ASCII, ISO-8859-1)",
                           reason="encoding")
    if layout is None:
        if declared in _WIDE:  # no mark and no NULs: the bytes are not UTF-16 or UTF-32
            raise XMLError(f"{name!r} is declared, but the body has neither the byte-order "
                           "mark nor the NULs of UTF-16 or UTF-32", reason="encoding")
        return declared or "utf-8"
    if declared is not None and declared not in _FITS[layout]:
        raise XMLError(f"{name!r} is declared, but the byte-order mark or first bytes say "
                       f"{layout}", reason="encoding")
    return layout
