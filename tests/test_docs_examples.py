"""The handler guide's Python blocks, each a whole file: written out as they stand, they pass
mypy --strict, import, run their own tests, and do what docs/handlers.md says of them
(through the real /wechat route); docs/examples holds the same files."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mypy import api as mypy_api
from structlog.testing import capture_logs

from handlers import greeting
from handlers.router import Router
from handlers.testing import HandlerClient
from tests.support import ROOT

GUIDE = ROOT / "docs" / "handlers.md"
_NAME = re.compile(r"# ([\w]+\.py)\n")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def guide_files() -> dict[str, str]:
    """file name -> the block, as the guide shows it."""
    files: dict[str, str] = {}
    for block in _python_blocks(GUIDE.read_text(encoding="utf-8")):
        named = _NAME.match(block)
        assert named, f"a guide block must start with '# <file>.py':\n{block[:200]}"
        assert named[1] not in files, f"two blocks are {named[1]}"
        files[named[1]] = block
    return files


@pytest.fixture
def guide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    """The guide's blocks written to a directory of their own and imported, as an owner's
    files next to each other would be."""
    for name, block in guide_files().items():
        (tmp_path / name).write_text(block, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [name.removesuffix(".py") for name in guide_files()]
    try:
        yield {name: importlib.import_module(name) for name in names}
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_the_guide_shows_every_feature_in_a_whole_file() -> None:
    files = guide_files()
    assert {"shop.py", "vip.py", "audit.py", "conversation.py", "stock.py",
            "test_shop.py"} <= set(files)
    # docs/examples holds the same files, byte for byte: copy them and they work.
    examples = {p.name: p.read_text(encoding="utf-8")
                for p in (ROOT / "docs" / "examples").glob("*.py")}
    assert examples == files


@pytest.mark.slow
def test_the_guides_blocks_pass_mypy_strict(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    paths = []
    for name, block in guide_files().items():
        (tmp_path / name).write_text(block, encoding="utf-8")
        paths.append(str(tmp_path / name))
    monkeypatch.chdir(ROOT)  # the project's packages and mypy cache
    out, err, _ = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                *paths])
    # Only the blocks' own lines count (what the project's sources report is `make lint`'s);
    # by file name, as mypy's cache may name the directory of an earlier run.
    names = tuple(f"/{name}" for name in guide_files())
    ours = [line for line in out.splitlines() if line.split(":")[0].endswith(names)]
    assert ours == [] and "error:" not in err, out + err


async def test_the_guides_own_tests_pass(guide: dict[str, ModuleType]) -> None:
    ran = []
    for module in guide.values():
        for name, fn in inspect.getmembers(module, inspect.iscoroutinefunction):
            if name.startswith("test_") and fn.__module__ == module.__name__:
                await fn()
                ran.append(name)
    assert sorted(ran) == ["test_conversation", "test_shop"]


async def test_shop_answers_as_the_guide_says(guide: dict[str, ModuleType]) -> None:
    async with HandlerClient(guide["shop"].router) as wx:
        assert (await wx.text("营业时间"))["Content"] == "We are open 9:00-17:00."
        assert (await wx.text("what are your opening hours?"))["Content"] == (
            "We are open 9:00-17:00.")
        assert (await wx.text("ORDER 7"))["Content"] == "Looking up order 7."
        assert await wx.subscribe(scene="other") == {}
        assert await wx.scan("fair2026") == {}  # subscribe(scene=) is for new followers


async def test_filters_answer_as_the_guide_says(guide: dict[str, ModuleType]) -> None:
    vip_id = next(iter(guide["vip"].VIPS))
    async with HandlerClient(guide["vip"].router) as wx:
        assert (await wx.text("price?", openid=vip_id))["Content"].startswith("Your prices")
        assert await wx.text("PRICE?", openid=vip_id) == {}          # ~shouting
        assert await wx.text("price?") == {}                          # not a VIP
        assert (await wx.text("price!!"))["Content"].startswith("No need to shout")
        assert (await wx.click("SUPPORT", openid=vip_id))["Content"].startswith("Call us")
        assert (await wx.click("SUPPORT_NOW"))["Content"].startswith("Call us")  # urgent
        assert await wx.click("SUPPORT") == {}


async def test_middleware_answers_as_the_guide_says(guide: dict[str, ModuleType]) -> None:
    blocked = next(iter(guide["audit"].BLOCKED))
    top = Router()  # as the app orders them: the owner's router, then the greeting
    top.include(guide["audit"].router)
    top.include(greeting.router)
    with capture_logs() as logs:
        async with HandlerClient(top) as wx:
            assert (await wx.text("ping"))["Content"] == "pong"
            assert await wx.subscribe(openid=blocked) == {}
            assert await wx.text("ping", openid=blocked) == {}
            assert (await wx.subscribe())["Content"] == "Welcome, 刺猬宝宝!"
    audits = [(line["push"], line["handler"], line["reply"]) for line in logs
              if line["event"] == "audit"]
    # The block list runs outermost: a blocked follower's pushes never reach the audit.
    assert audits == [("text", "ping", "text"), ("subscribe", None, None)]
    pushes = [line["handler"] for line in logs if line["event"] == "push"]
    assert pushes == ["ping", "block_list", "block_list", "greet"]


async def test_the_conversation_answers_as_the_guide_says(guide: dict[str, ModuleType]) -> None:
    async with HandlerClient(guide["conversation"].router) as wx:
        assert (await wx.text("订单"))["Content"] == "Send your order number."
        assert await wx.text("1234", openid="oSomeoneElse") == {}  # per follower
        assert (await wx.text("取消"))["Content"] == "Cancelled."
        assert await wx.text("#1234") == {}
        assert (await wx.text("order"))["Content"] == "Send your order number."
        assert (await wx.text("#123456789"))["Content"] == "Looking up order 123456789."


async def test_stock_answers_in_time_or_says_so(guide: dict[str, ModuleType]) -> None:
    async with HandlerClient(guide["stock"].router) as wx:
        assert (await wx.text("stock of hay?"))["Content"] == "3 left."


def _readme_handlers_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Writing handlers", 1)[1].split("\n## ", 1)[0]
    (block,) = _python_blocks(section)
    return block


@pytest.mark.slow
def test_readme_handler_example_passes_mypy_strict(monkeypatch: Any, tmp_path: Path) -> None:
    example = tmp_path / "readme_handlers.py"
    example.write_text(_readme_handlers_block(), encoding="utf-8")
    monkeypatch.chdir(ROOT)
    out, err, _ = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                str(example)])
    assert [line for line in out.splitlines()
            if line.split(":")[0].endswith("/readme_handlers.py")] == [], out + err
