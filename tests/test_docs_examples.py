"""The handler guide's examples (docs/examples) type-check under mypy --strict and do what
docs/handlers.md says, through the project's test client."""

import importlib
import re

import pytest
from mypy import api as mypy_api

from tests.support import ROOT


@pytest.mark.slow
def test_examples_pass_mypy_strict(monkeypatch):
    monkeypatch.chdir(ROOT)  # where an owner runs it: the project's packages importable
    out, err, status = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                     str(ROOT / "docs" / "examples")])
    assert status == 0, out + err


async def test_examples_answer_as_documented(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    check = importlib.import_module("examples.check_shop")
    await check.check_shop()


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_readme_handler_example_passes_mypy_strict(monkeypatch, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Writing handlers", 1)[1].split("\n## ", 1)[0]
    (block,) = _python_blocks(section)
    example = tmp_path / "readme_handlers.py"
    example.write_text(block, encoding="utf-8")
    monkeypatch.chdir(ROOT)
    out, err, status = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                     str(example)])
    assert status == 0, out + err


def test_the_guides_code_is_the_checked_examples():
    # docs/handlers.md quotes docs/examples; a line changed in one must change in the other.
    examples = "\n".join(p.read_text(encoding="utf-8")
                         for p in (ROOT / "docs" / "examples").glob("*.py"))
    known = {line.strip() for line in examples.splitlines()}
    guide = (ROOT / "docs" / "handlers.md").read_text(encoding="utf-8")
    blocks = _python_blocks(guide)
    assert len(blocks) >= 3
    for block in blocks:
        for line in block.splitlines():
            assert not line.strip() or line.strip() in known, line
