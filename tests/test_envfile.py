"""wxhook.tools.envfile reads a file as systemd's EnvironmentFile= does; .env.example reads the
same under it and under python-dotenv (pydantic-settings' .env reader)."""

import re

import pytest
from dotenv import dotenv_values

from tests.support import ROOT
from wxhook.tools.envfile import parse_env_file

# Cases from systemd.exec(5) ("EnvironmentFile=") and systemd's env-file parser.
SYSTEMD_CASES = [
    ("WXHOOK_GREETING=Welcome, {nickname}!\n", {"WXHOOK_GREETING": "Welcome, {nickname}!"}),
    ("A=  spaced value   \n", {"A": "spaced value"}),
    ("  A = b\n", {"A": "b"}),
    ('A="quoted  # not a comment"\n', {"A": "quoted  # not a comment"}),
    ("A='single $HOME \\n'\n", {"A": "single $HOME \\n"}),
    ('A="esc \\" \\\\ \\$ \\n"\n', {"A": 'esc " \\ $ \\n'}),
    ("A=b # c\n", {"A": "b # c"}),                 # no inline comments
    ("# A=1\n; B=2\nC=3\n", {"C": "3"}),
    ("A=one \\\ntwo\n", {"A": "one two"}),         # a backslash joins lines
    ("A=$HOME\n", {"A": "$HOME"}),                # nothing is expanded
    ("A=\n", {"A": ""}),
    ("no equals sign\nB=1\n", {"B": "1"}),
    ("export A=1\n1BAD=2\nOK_1=3", {"OK_1": "3"}),  # not variable names: skipped
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ("A=first\nA=second\n", {"A": "second"}),
]


@pytest.mark.parametrize(("text", "expect"), SYSTEMD_CASES)
def test_reads_as_systemd_does(text, expect):
    assert parse_env_file(text) == expect


def _example_lines():
    """Every assignment in .env.example, the commented-out ones uncommented."""
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*=.*)", line)
        if m:
            yield m.group(1)


@pytest.mark.parametrize("line", list(_example_lines()))
def test_every_env_example_line_reads_the_same_for_systemd_and_dotenv(line, tmp_path):
    path = tmp_path / "line.env"
    path.write_text(line + "\n")
    assert parse_env_file(line + "\n") == dict(dotenv_values(path))


def test_env_example_names_every_setting():
    from wxhook.server.config import Settings

    names = {line.partition("=")[0] for line in _example_lines()}
    aliases = {f.alias for f in Settings.model_fields.values()} - {"WXHOOK_SANDBOX"}
    assert aliases <= names, sorted(aliases - names)


def test_env_example_sets_no_defaults():
    """Defaults live in one place (service/config.py): a copied .env.example must not pin
    them, or it overrides a deployment's own (systemd's WXHOOK_PROFILE_DB, say)."""
    from wxhook.server.config import Settings

    set_here = parse_env_file((ROOT / ".env.example").read_text())
    assert {k for k, v in set_here.items() if v} == set(), set_here
    assert {f.alias for f in Settings.model_fields.values()} >= set(set_here)
