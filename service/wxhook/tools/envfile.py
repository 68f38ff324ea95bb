"""Read an environment file the way systemd's EnvironmentFile= does (`wxhook check --env-file`).

The file a systemd unit loads is the one `wxhook check` must judge, so it is read by the
same rules (systemd.exec(5), src/basic/env-file.c), not by a shell: no word splitting, so
`WXHOOK_GREETING=Welcome, {nickname}!` keeps its space. The rules:

- `#` or `;` as the first non-blank character of a line starts a comment (not elsewhere:
  `A=b # c` is the value `b # c`); a line without `=` is skipped;
- blanks around the key and before the value are dropped, trailing blanks of an unquoted
  value too; a backslash escapes the next character and before a newline joins lines;
- `'...'` is taken literally; in `"..."` only \\", \\\\, \\`, \\$ and an escaped newline are
  escapes, any other backslash stays; no variable is expanded;
- a name that is not a valid variable name is skipped, as systemd does.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLANK = " \t"
_DOUBLE_QUOTE_ESCAPES = '"\\`$'


def parse_env_file(text: str) -> dict[str, str]:
    """The variables an EnvironmentFile= with this content sets, in file order."""
    found: dict[str, str] = {}
    state, key, value = "pre_key", "", ""
    trailing = -1  # where a run of trailing blanks in an unquoted value starts

    def push() -> None:
        nonlocal key, value
        name = key.rstrip(_BLANK)
        if _NAME.fullmatch(name):
            found[name] = value[:trailing] if trailing >= 0 else value
        key, value = "", ""

    for c in text + "\n":
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in _BLANK + "\n\r":
                state, key = "key", c
        elif state == "key":
            if c in "\n\r":
                state, key = "pre_key", ""
            elif c == "=":
                state, value, trailing = "pre_value", "", -1
            else:
                key += c
        elif state == "pre_value":
            if c in "\n\r":
                push()
                state = "pre_key"
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in _BLANK:
                state, value = "value", value + c
        elif state == "value":
            if c in "\n\r":
                push()
                state = "pre_key"
            elif c == "\\":
                state, trailing = "value_escape", -1
            else:
                if c not in _BLANK:
                    trailing = -1
                elif trailing < 0:
                    trailing = len(value)
                value += c
        elif state == "value_escape":
            state = "value"
            if c not in "\n\r":
                value += c
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value += c
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in _DOUBLE_QUOTE_ESCAPES:
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in "\n\r":
                state = "pre_key"
        elif state == "comment_escape":
            state = "pre_key" if c in "\n\r" else "comment"
    return found


def read_env_file(path: str | Path) -> dict[str, str]:
    """parse_env_file() of a file (UTF-8, as systemd requires)."""
    return parse_env_file(Path(path).read_text(encoding="utf-8"))
