"""The documentation site builds with --strict, fails on a broken link, and its configuration
reference is the one the code generates."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

# The code's modules: the only lines to change when it moves (wxhook.server.x, wxhook.x).
from handlers import rules_schema
from service.config import Settings
from service.metrics import Metrics
from tests.support import ROOT

_spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "reference.py")
assert _spec is not None and _spec.loader is not None
reference = importlib.util.module_from_spec(_spec)  # docs/reference.py, the page's generator
_spec.loader.exec_module(reference)

HAS_MKDOCS = all(importlib.util.find_spec(m) for m in ("mkdocs", "material"))
needs_mkdocs = pytest.mark.skipif(not HAS_MKDOCS, reason="the docs extra is not installed: "
                                  "`make docs` installs it")


def test_the_configuration_page_is_what_the_code_generates():
    assert reference.PAGE.read_text(encoding="utf-8") == reference.render(), (
        "docs/configuration.md is out of date: run `make docs-config` and commit it")


def test_the_page_has_every_setting_and_every_part_of_the_rules_file():
    page = reference.PAGE.read_text(encoding="utf-8")
    for name, info in Settings.model_fields.items():
        assert f"\n### {info.alias}\n\n{info.description}\n" in page, name
    for table in (rules_schema.SECTIONS, rules_schema.SUBSCRIBE_FIELDS,
                  rules_schema.KEYWORD_FIELDS, rules_schema.DEFAULT_FIELDS, rules_schema.MODES):
        for key, meaning in table.items():
            assert f"| `{key}` | {meaning} |" in page, key
    for kind, fields in rules_schema.REPLY_FIELDS.items():
        assert f"| `{kind}` | {', '.join(f'`{f}`' for f in fields)} |" in page, kind


def test_the_operations_page_names_every_metric():
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    families = list(Metrics().registry.collect())
    assert families
    for family in families:  # a counter is exported with _total
        name = family.name + ("_total" if family.type == "counter" else "")
        assert re.search(rf"`{name}(?![a-z_])", page), name


class _MoreSettings(Settings):
    new_knob: int = Field(7, ge=1, alias="WXHOOK_NEW_KNOB", description="A knob added later.")


class _UndescribedSettings(Settings):
    new_knob: int = Field(7, alias="WXHOOK_NEW_KNOB")


def test_a_setting_added_to_the_code_makes_the_page_stale(monkeypatch):
    monkeypatch.setattr(reference, "Settings", _MoreSettings)
    assert reference.stale()
    assert "### WXHOOK_NEW_KNOB\n\nA knob added later.\n\nDefault: `7`; whole number; >= 1." \
        in reference.render()
    monkeypatch.setattr(reference, "Settings", _UndescribedSettings)
    with pytest.raises(ValueError, match="WXHOOK_NEW_KNOB"):
        reference.render()


def _build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"})


@needs_mkdocs
def test_the_site_builds_strict(tmp_path):
    done = _build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    config = (tmp_path / "site" / "configuration" / "index.html").read_text(encoding="utf-8")
    for info in Settings.model_fields.values():
        assert str(info.alias) in config
    # The pages that show repository files have them, whole.
    assert "Hand-written structures" in (tmp_path / "site" / "benchmarks" / "index.html"
                                         ).read_text(encoding="utf-8")
    assert "What was checked here" in (tmp_path / "site" / "deployment" / "index.html"
                                       ).read_text(encoding="utf-8")
    assert "Two commands" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


@pytest.fixture
def copy(tmp_path) -> Path:
    """The repository as the site's build sees it, to break."""
    dest = tmp_path / "repo"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "site", "*cache*", "__pycache__", "var", "test-artifacts", "logs"))
    return dest


@needs_mkdocs
@pytest.mark.slow
@pytest.mark.parametrize(("page", "text", "says"), [
    ("docs/security.md", "[x](no-such-page.md)", "no-such-page.md"),
    ("docs/security.md", "[x](oauth.md#no-such-anchor)", "no-such-anchor"),
    ("docs/security.md", "[x](../deploy/no-such-file.conf)", "deploy/no-such-file.conf"),
    ("README.md", "[x](docs/no-such-page.md)", "no-such-page.md"),
    ("bench/README.md", "[x](#no-such-heading)", "no-such-heading"),
    ("docs/configuration.md", "| `WXHOOK_EDITED_BY_HAND` | 1 |", "make docs-config"),
])
def test_a_broken_link_or_a_stale_reference_fails_the_build(copy, page, text, says):
    with (copy / page).open("a", encoding="utf-8") as f:
        f.write(f"\n{text}\n")
    done = _build(copy, copy / "site")
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
