"""YAML with line numbers: mappings and lists remember where each entry was written."""

from __future__ import annotations

import re
from typing import Any

import yaml


class YamlMap(dict[Any, Any]):
    """A mapping with the line of the mapping and of each key (1-based)."""

    def __init__(self, items: dict[Any, Any], *, line: int, lines: dict[Any, int],
                 dup_keys: tuple[Any, ...] = ()) -> None:
        super().__init__(items)
        self.line = line
        self.lines = lines
        self.dup_keys = dup_keys


class Seq(list[Any]):
    """A list with its line and the line of each item."""

    def __init__(self, items: list[Any], *, line: int, lines: list[int]) -> None:
        super().__init__(items)
        self.line = line
        self.lines = lines


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, keeping marks, with YAML 1.2's few implicit types.

    YAML 1.1 reads `yes`, `no`, `on`, `off` as booleans, `0123` as octal and `9:00` as 540:
    keywords and menu keys the owner wrote as text must stay that text.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class registry


for _tag, _pattern, _first in (
        ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
        ("int", r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
        ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""])):
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"),
                                  list(_first))


def _map(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    items: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    dups: list[Any] = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a text or a number", key_node.start_mark)
        if key in items:
            dups.append(key)
        items[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    return YamlMap(items, line=node.start_mark.line + 1, lines=lines, dup_keys=tuple(dups))


def _seq(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return Seq(items, line=node.start_mark.line + 1,
               lines=[child.start_mark.line + 1 for child in node.value])


_Loader.add_constructor("tag:yaml.org,2002:map", _map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _seq)


def parse_yaml(data: bytes) -> Any:
    """The document in `data` (safe tags only), mappings as YamlMap and lists as Seq."""
    return yaml.load(data.decode("utf-8"), Loader=_Loader)


def line_of(node: Any, path: str, default: int) -> int:
    """The line of "a[1].b" inside `node`, or the nearest enclosing line known."""
    line = default
    for name, index in re.findall(r"(\w+)(?:\[(\d+)\])?", path):
        if not isinstance(node, YamlMap) or name not in node:
            break
        line, node = node.lines[name], node[name]
        if index:
            i = int(index)
            if not isinstance(node, Seq) or i >= len(node):
                break
            line, node = node.lines[i], node[i]
    return line
