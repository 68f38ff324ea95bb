"""The rules file (WXHOOK_RULES): YAML read and checked into frozen dataclasses.

Every problem is reported with its place (`FILE:LINE: keywords[2] (hours).regex[0]: ...`), all
of them at once, so an owner fixes a file in one pass; `load_rules` refuses a file with any.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.errors import WeChatError
from service.menu import KEY_BYTES, menu_problems

from .rules_regex import Pattern, RegexError, ascii_only, compile_regex
from .rules_replies import NICKNAME, Answer, ReplyChecker
from .rules_schema import DEFAULT_FIELDS, KEYWORD_FIELDS, SECTIONS, SUBSCRIBE_FIELDS
from .rules_yaml import Seq, YamlMap, line_of, parse_yaml

CONSOLE_DEFAULT_ONCE_PER = 3600  # the console's 收到消息回复 answers a follower once an hour


class RulesError(WeChatError):
    """A rules file that cannot be used; `problems` holds one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Keyword:
    """One 关键词回复 rule; words are already case-folded, regexes compiled (RE2)."""

    name: str
    equal: tuple[str, ...]
    contain: tuple[str, ...]
    regex: tuple[Pattern, ...]
    answer: Answer


@dataclass(frozen=True, slots=True)
class Subscribe:
    """被关注回复, with per-QR-scene greetings."""

    answer: Answer | None
    anonymous: str | None
    scenes: Mapping[str, Answer]


@dataclass(frozen=True, slots=True)
class Default:
    """收到消息回复: a message no rule matched; at most once per `once_per` s per follower."""

    answer: Answer
    once_per: int


@dataclass(frozen=True, slots=True)
class Rules:
    """A whole rules file, checked."""

    path: str
    version: str                       # first 12 hex digits of the file's sha256
    subscribe: Subscribe | None = None
    keywords: tuple[Keyword, ...] = ()
    default: Default | None = None
    menu: Mapping[str, Any] | None = None
    clicks: Mapping[str, Answer] = field(default_factory=dict)
    # What is valid but works otherwise than the owner may think, with its place (`rules check`
    # prints them and exits 0): a text over WeChat's size limit, an ASCII-only regex class.
    warnings: tuple[str, ...] = ()


def load_rules(path: str | Path) -> Rules:
    """Read and check a rules file; RulesError lists every problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise RulesError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    rules, problems = parse_rules(data, name=str(p))
    if problems:
        raise RulesError(problems)
    assert rules is not None
    return rules


def parse_rules(data: bytes, *, name: str = "rules.yaml") -> tuple[Rules | None, list[str]]:
    """The rules in `data`, or None and one line per problem (never an exception)."""
    try:
        return _parse_rules(data, name=name)
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError from '[' * 5000
        # Whatever a file makes the parser or checker raise is one more thing wrong with it:
        # `rules check`, start-up and reloads all report it as a problem, never a traceback.
        return None, [f"{name}:1: cannot be read as rules: {type(exc).__name__}"]


def _parse_rules(data: bytes, *, name: str) -> tuple[Rules | None, list[str]]:
    version = hashlib.sha256(data).hexdigest()[:12]
    try:
        doc = parse_yaml(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        why = getattr(exc, "problem", None) or str(exc)
        return None, [f"{name}:{line}: not valid YAML: {why}"]
    except UnicodeDecodeError:
        return None, [f"{name}:1: not UTF-8 text"]
    c = _Checker(name)
    if doc is None:
        return Rules(path=name, version=version), []
    if not isinstance(doc, YamlMap):
        return None, [f"{name}:1: the file must be a mapping of {', '.join(SECTIONS)}"]
    for key in doc.dup_keys:
        c.add(doc.lines.get(key, doc.line), str(key), "given twice (the second would win)")
    for key in doc:
        if key not in SECTIONS:
            c.add(doc.lines[key], str(key), f"unknown section (expected {', '.join(SECTIONS)})")
    rules = Rules(
        path=name, version=version,
        subscribe=c.subscribe(doc["subscribe"], doc.lines["subscribe"])
        if "subscribe" in doc else None,
        keywords=c.keywords(doc.get("keywords"), doc.lines.get("keywords", 1)),
        default=c.default(doc["default"], doc.lines["default"]) if "default" in doc else None,
        menu=c.menu(doc["menu"], doc.lines["menu"]) if "menu" in doc else None,
        clicks=c.clicks(doc.get("clicks"), doc.lines.get("clicks", 1)),
        warnings=tuple(c.warnings),
    )
    return (None, c.problems) if c.problems else (rules, [])


class _Checker(ReplyChecker):
    """Builds each section."""

    def subscribe(self, node: Any, line: int) -> Subscribe | None:
        if isinstance(node, str | Seq):  # a short form: `subscribe: "Welcome!"`
            node = YamlMap({"reply": node}, line=line, lines={"reply": line})
        if not self._mapping(node, line, "subscribe", tuple(SUBSCRIBE_FIELDS)):
            return None
        answer = (self.answer(node["reply"], node.lines["reply"], "subscribe.reply")
                  if "reply" in node else None)
        anonymous = node.get("anonymous")
        if anonymous is not None and not (isinstance(anonymous, str) and anonymous.strip()):
            self.add(node.lines["anonymous"], "subscribe.anonymous", "must be a non-empty text")
            anonymous = None
        if isinstance(anonymous, str) and NICKNAME in anonymous:
            self.add(node.lines["anonymous"], "subscribe.anonymous",
                     "is used when no name is known: it cannot contain {nickname}")
        elif isinstance(anonymous, str):
            self.check_size(anonymous, node.lines["anonymous"], "subscribe.anonymous",
                            passive=True)
        scenes: dict[str, Answer] = {}
        raw = node.get("scenes")
        if raw is not None and not isinstance(raw, YamlMap):
            self.add(node.lines["scenes"], "subscribe.scenes", "must map a scene to a reply")
        elif raw is not None:
            for scene, value in raw.items():
                got = self.answer(value, raw.lines[scene], f"subscribe.scenes.{scene}")
                if got is not None:
                    scenes[str(scene)] = got
        return Subscribe(answer, anonymous, scenes)

    def keywords(self, node: Any, line: int) -> tuple[Keyword, ...]:
        if node is None:
            return ()
        if not isinstance(node, Seq):
            self.add(line, "keywords", "must be a list of rules")
            return ()
        out: list[Keyword] = []
        names: set[str] = set()
        for i, rule in enumerate(node):
            at = node.lines[i]
            name = rule.get("name") if isinstance(rule, YamlMap) else None
            label = f"keywords[{i}]" + (f" ({name})" if isinstance(name, str) else "")
            if not self._mapping(rule, at, label, tuple(KEYWORD_FIELDS)):
                continue
            if not isinstance(name, str) or not name.strip():
                name = f"keyword-{i + 1}"
                if "name" in rule:
                    self.add(rule.lines["name"], f"{label}.name", "must be a non-empty text")
            elif name in names:
                self.add(rule.lines["name"], f"{label}.name", "another rule has this name")
            names.add(name)
            equal = self._words(rule, "equal", label)
            contain = self._words(rule, "contain", label)
            regex = self._regexes(rule, label)
            if not (equal or contain or regex):
                self.add(at, label, "needs equal, contain or regex")
            answer = self.answer(YamlMap({k: rule[k] for k in ("mode", "replies") if k in rule},
                                         line=at, lines=rule.lines), at, label, rule_form=True)
            if answer is not None:
                out.append(Keyword(name, tuple(w.strip().casefold() for w in equal),
                                   tuple(w.casefold() for w in contain),
                                   tuple(r for r in regex if r is not None), answer))
        return tuple(out)

    def _words(self, rule: YamlMap, key: str, label: str) -> list[str]:
        value = rule.get(key)
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else None
        if value is None:
            return []
        if items is None or not all(isinstance(w, str | int) and str(w).strip() for w in items):
            self.add(rule.lines[key], f"{label}.{key}", "must be a text or a list of texts")
            return []
        return [str(w) for w in items]

    def _regexes(self, rule: YamlMap, label: str) -> list[Pattern | None]:
        node = rule.get("regex")
        lines = node.lines if isinstance(node, Seq) else None
        out: list[Pattern | None] = []
        for k, pattern in enumerate(self._words(rule, "regex", label)):
            line = rule.lines["regex"] if lines is None else lines[k]
            where = f"{label}.regex" if lines is None else f"{label}.regex[{k}]"
            try:
                out.append(compile_regex(pattern))
            except RegexError as exc:
                self.add(line, where, f"bad regex {pattern!r}: {exc}")
                out.append(None)
                continue
            if ascii := ascii_only(pattern):
                self.warn(line, where, f"{' and '.join(ascii)} in {pattern!r} see ASCII only "
                          "(RE2; Python's re saw Unicode): for Chinese text write a class, "
                          "e.g. [^\\p{L}\\p{N}_] for \\W")
        return out

    def default(self, node: Any, line: int) -> Default | None:
        if isinstance(node, str | Seq):
            node = YamlMap({"reply": node}, line=line, lines={"reply": line})
        if not self._mapping(node, line, "default", tuple(DEFAULT_FIELDS)):
            return None
        once = node.get("once_per", CONSOLE_DEFAULT_ONCE_PER)
        if type(once) is not int or once < 0:
            self.add(node.lines.get("once_per", line), "default.once_per",
                     "must be a whole number of seconds >= 0 (0 = every message)")
            once = 0
        if "reply" not in node:
            self.add(line, "default.reply", "missing")
            return None
        answer = self.answer(node["reply"], node.lines["reply"], "default.reply")
        return Default(answer, once) if answer is not None else None

    def menu(self, node: Any, line: int) -> Mapping[str, Any] | None:
        for problem in menu_problems(node):
            where = f"menu.{problem.where}"
            self.add(line_of(node, problem.where, line), where, problem.message)
        return node if isinstance(node, dict) else None

    def clicks(self, node: Any, line: int) -> dict[str, Answer]:
        if node is None:
            return {}
        if not isinstance(node, YamlMap):
            self.add(line, "clicks", "must map a menu key to a reply")
            return {}
        out: dict[str, Answer] = {}
        for key, value in node.items():
            if len(str(key).encode()) > KEY_BYTES:
                self.add(node.lines[key], f"clicks.{key}", f"a menu key has at most {KEY_BYTES} "
                         "bytes")
            got = self.answer(value, node.lines[key], f"clicks.{key}")
            if got is not None:
                out[str(key)] = got
        return out

