"""Untrusted XML read without any I/O: decoded here first, so libxml2 never sees a DTD.

libxml2 acts on a DTD while it parses: with `load_dtd=False` and `resolve_entities=False` it
still opens an external subset or a parameter entity (`/dev/zero` pins a worker for good,
a FIFO blocks it, error texts tell which files exist). A byte search for `<!DOCTYPE` misses
UTF-16 and other encodings. So the document is decoded here (service.charset: only in an
encoding WeChat can send, named by its BOM, first bytes or declaration), and libxml2 gets
UTF-8 text whose first markup is the `<xml>` root: with no prolog there is no place for a
DTD. A resolver that refuses everything and `no_network` stand behind that, should libxml2
ever ask for a resource.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from .charset import text_of
from .errors import XMLError

_DTD = re.compile(r"<!(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)


class _RefuseAll(etree.Resolver):  # type: ignore[misc]
    """Answers every request for an external resource with nothing."""

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:
        return self.resolve_string("", context)


def _parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        encoding="utf-8", resolve_entities=False, no_network=True, load_dtd=False,
        dtd_validation=False, attribute_defaults=False, huge_tree=False,
        remove_comments=True, remove_pis=True, collect_ids=False)
    parser.resolvers.add(_RefuseAll())
    return parser


_PARSER = _parser()


def decode(body: bytes) -> str:
    """The document as text from its `<xml>` root on; XMLError unless its encoding is one
    WeChat can send, its first markup is the root and it declares nothing (no DTD, no
    entity), in any encoding."""
    text = text_of(body)
    if _DTD.search(_outside_cdata(text)):
        raise XMLError("DTDs and entities are not accepted")
    return text


def _outside_cdata(text: str) -> str:
    """The text without its CDATA sections (a follower may type "<!DOCTYPE"); linear,
    where a regular expression would rescan to the end from every unclosed section."""
    kept, i = [], 0
    while (start := text.find("<![CDATA[", i)) != -1:
        kept.append(text[i:start])
        end = text.find("]]>", start + 9)
        if end == -1:
            return "".join(kept) + text[start:]
        i = end + 3
    kept.append(text[i:])
    return "".join(kept)


def parse(body: bytes) -> etree._Element:
    """The root of an untrusted document, parsed without touching a file or the network."""
    text = decode(body)
    try:
        root = etree.fromstring(text.encode("utf-8"), _PARSER)
    except (etree.XMLSyntaxError, ValueError) as exc:
        # libxml2's text stays out of the answer: it can describe local files.
        raise XMLError("malformed XML") from exc
    if root is None or root.getroottree().docinfo.doctype:
        raise XMLError("DTDs and entities are not accepted")
    # WeChat sends no namespaces: a namespaced element is XInclude or other cleverness
    # that some later processing step might act on.
    if any(isinstance(el.tag, str) and el.tag.startswith("{") for el in root.iter()):
        raise XMLError("namespaces (XInclude) are not accepted")
    return root


# -- the fields of a push ---------------------------------------------------------------

# A safe-mode body has exactly this shape; everything else goes through the parser. Only
# base64 can be captured, and msg_signature then vouches for it, so nothing is trusted
# that the parser would have rejected.
_SAFE_ENVELOPE = re.compile(
    rb"\s*<xml>\s*<ToUserName><!\[CDATA\[[A-Za-z0-9_-]{0,64}\]\]></ToUserName>\s*"
    rb"<Encrypt><!\[CDATA\[([A-Za-z0-9+/=]{16,})\]\]></Encrypt>\s*</xml>\s*")


def safe_mode_encrypt(body: bytes) -> str | None:
    """The Encrypt of a plain safe-mode envelope, or None when the body is anything else."""
    m = _SAFE_ENVELOPE.fullmatch(body)
    return m.group(1).decode("ascii") if m else None


# What WeChat sends is flat: <xml>, then leaves whose text is one CDATA section or plain
# characters. Such a document means the same to every XML parser, so it is read with two
# regular expressions, faster than lxml builds a tree. Anything else (a declaration, a DTD,
# nesting, attributes, entities, comments, a BOM, \r, characters XML forbids, invalid
# UTF-8) goes to lxml. tests/test_properties.py checks that both readings agree on every
# document this one accepts.
_TAG = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_BAD = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\r\\ufffe\\uffff"  # not XML, or normalised (\r)
# A CDATA section's text cannot contain "]]>", and saying so keeps the match linear: with a
# lazy ".*?" one section could swallow the next ones, 2^n ways to fail on a hostile body.
_LEAF = rf"(?:<!\[CDATA\[([^\]{_BAD}]*(?:\](?!\]>)[^\]{_BAD}]*)*)\]\]>|([^<&\]{_BAD}]*))"
_FLAT_DOC = re.compile(rf"[ \t\n]*<xml>((?:[ \t\n]*<({_TAG})>{_LEAF}</\2>)*)[ \t\n]*</xml>[ \t\n]*")
_FLAT_LEAF = re.compile(rf"<({_TAG})>{_LEAF}</\1>")
_FLAT_START = re.compile(rb"[ \t\n]*<xml>")


def parse_fields(body: bytes) -> dict[str, str]:
    """The root's direct children as {tag: text}, plus the documented nested fields."""
    fields = flat_fields(body)
    return fields if fields is not None else tree_fields(body)


def flat_fields(body: bytes) -> dict[str, str] | None:
    """The fields of a flat push, or None when the document needs a real parser."""
    # Nothing is decoded before the encoding is known: a body that starts with anything but
    # the root (a BOM, a declaration, UTF-16) is service.charset's to read.
    if not _FLAT_START.match(body):
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    doc = _FLAT_DOC.fullmatch(text)
    if doc is None:
        return None
    fields: dict[str, str] = {}
    for tag, cdata, chars in _FLAT_LEAF.findall(doc.group(1)):
        _put(fields, tag, cdata or chars)
    return fields


def tree_fields(body: bytes) -> dict[str, str]:
    """The fields of a document that needs a real parser (nesting, entities, any encoding)."""
    # No DTD, entities, network, files or huge trees: a push is a few flat fields, and
    # anything cleverer is an attack (XXE reads local files, billion-laughs eats memory).
    root = parse(body)
    if root.tag != "xml":
        raise XMLError("the root element must be <xml>")
    fields: dict[str, str] = {}
    seen: set[str] = set()
    for child in root:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        if tag in seen:
            raise XMLError(f"repeated field {tag}")
        seen.add(tag)
        if not len(child):
            _put(fields, tag, child.text or "")
        elif tag in _CONTAINERS:
            _read_container(child, fields)
        # Any other element with children is no field: what it holds cannot stand in for
        # a top-level one (<Extra><FromUserName> must not change the sender).
    return fields


def reply_fields(body: bytes) -> dict[str, str]:
    """A passive reply's leaves by tag (<Image><MediaId> as MediaId), for the tools and
    tests that read what wxhook answered: replies nest, pushes' fields do not."""
    root = parse(body)
    return {el.tag: el.text or "" for el in root.iterdescendants()
            if isinstance(el.tag, str) and not len(el)}


# The nested containers WeChat documents and the children read from them. Their fields are
# named by their path, "ScanCodeInfo/ScanType": "/" cannot occur in a tag, so none of them
# can replace a top-level field, whatever a container holds.
_CONTAINERS = {
    "ScanCodeInfo": frozenset({"ScanType", "ScanResult"}),
    "SendPicsInfo": frozenset({"Count", "PicList"}),
    "SendLocationInfo": frozenset({"Location_X", "Location_Y", "Scale", "Label", "Poiname"}),
}


def _read_container(node: etree._Element, out: dict[str, str]) -> None:
    wanted = _CONTAINERS[node.tag]
    for child in node:
        tag = child.tag
        if not isinstance(tag, str) or tag not in wanted:
            continue
        key = f"{node.tag}/{tag}"
        if tag == "PicList":  # <item><PicMd5Sum>..</PicMd5Sum></item> a picture, in order
            md5s = (item.findtext("PicMd5Sum") for item in child if item.tag == "item")
            text = "\n".join(m for m in md5s if m is not None)
        elif len(child):
            raise XMLError(f"{key} must be text")
        else:
            text = child.text or ""
        _put(out, key, text, tag)


def _put(out: dict[str, str], key: str, text: str, tag: str | None = None) -> None:
    if key in out:
        # WeChat never repeats a field: a second one is a malformed (or forged) push, and
        # taking either copy would let one reader differ from the other, or a forger win.
        raise XMLError(f"repeated field {key}")
    out[key] = text.strip() if (tag or key) in _NUMERIC else text


_NUMERIC = frozenset({"CreateTime", "MsgId", "MsgID", "Count", "Scale", "Idx", "MsgDataId"})
