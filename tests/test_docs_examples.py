"""The handler guide's examples (docs/examples) type-check under mypy --strict and do what
docs/handlers.md says, through the project's test client."""

import importlib

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
