"""RulesSource in process: what the watcher notices, and what a refused file leaves."""

import asyncio
import os
import sys

import pytest

from wxhook.rules import RulesError
from wxhook.server.rules_source import RulesSource

GOOD = "keywords: [{name: r, equal: x, replies: ['%s']}]\n"


async def _until(check, seconds=3.0):
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def _answer(source):
    return source.current().match("x").answer.replies[0].content


async def test_a_configmap_style_symlink_swap_is_noticed(tmp_path):
    # Kubernetes mounts rules.yaml -> ..data/rules.yaml, ..data -> a timestamped directory,
    # and swaps ..data: the path's own mtime never changes.
    for name, text in (("v1", GOOD % "one"), ("v2", GOOD % "two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rules.yaml").write_text(text)
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/rules.yaml", tmp_path / "rules.yaml")
    source = RulesSource(str(tmp_path / "rules.yaml"))
    watcher = asyncio.create_task(source.watch(interval=0.01))
    try:
        assert _answer(source) == "one"
        os.symlink("v2", tmp_path / "..data_new")
        os.replace(tmp_path / "..data_new", tmp_path / "..data")
        await _until(lambda: _answer(source) == "two")
        assert source.status()["loaded_by"] == "file changed"
    finally:
        watcher.cancel()


def _remove(path):
    path.unlink()


def _nest_too_deep(path):
    # Nested deeper than the interpreter's recursion limit (whatever it is now: mypy's API
    # raises it in-process), PyYAML raises RecursionError, not a RulesError.
    path.write_text("[" * (sys.getrecursionlimit() + 100))


@pytest.mark.parametrize(("spoil", "why"), [
    (_remove, "cannot read"),
    (_nest_too_deep, ":1: cannot be read as rules: RecursionError"),
], ids=["removed", "parser-breaking"])
async def test_a_spoilt_file_keeps_the_rules_says_why_and_the_watch_goes_on(tmp_path, spoil, why):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD % "one")
    results = []
    source = RulesSource(str(path), on_result=results.append)
    watcher = asyncio.create_task(source.watch(interval=0.01))
    try:
        spoil(path)
        await _until(lambda: results == ["failed"])
        assert _answer(source) == "one"
        assert why in source.status()["last_error"]
        path.write_text(GOOD % "two")
        await _until(lambda: results == ["failed", "ok"])
        assert not watcher.done()
        assert _answer(source) == "two" and source.status()["last_error"] is None
    finally:
        watcher.cancel()


def test_a_bad_file_at_start_is_refused(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("keywords: [{equal: x, replies: []}]\n")
    with pytest.raises(RulesError, match="empty"):
        RulesSource(str(path))


def test_a_file_that_breaks_the_parser_is_refused_at_start_in_one_line(tmp_path):
    path = tmp_path / "rules.yaml"
    _nest_too_deep(path)
    with pytest.raises(RulesError) as err:
        RulesSource(str(path))
    assert err.value.problems == [f"{path}:1: cannot be read as rules: RecursionError"]
