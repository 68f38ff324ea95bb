"""The installed project is one typed import package, `wxhook`, as an owner sees it from a
clean virtual environment outside this repository."""

import ast
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from tests.support import ROOT

HANDLER = '''
from wxhook import Context, Router, SubscribeEvent, TextMessage

router = Router()


@router.subscribe()
async def hello(msg: SubscribeEvent, ctx: Context) -> str:
    return "Hi from the owner's own handlers package"


@router.text(equal="ping")
async def ping(msg: TextMessage, ctx: Context) -> str:
    return "pong"
'''


def test_pyproject_lists_every_package():
    # setuptools is given the package list by hand (two source folders, one package): a
    # subpackage missing from it would be missing from every wheel.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder in (ROOT / "handlers", ROOT / "service"):
        for init in folder.rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(folder).parts))
    assert found == listed


def test_the_handler_api_never_imports_the_server():
    # The layering reads top-down: the server imports the API, never the other way round
    # (not even for the type checker).
    for path in (ROOT / "handlers" / "wxhook").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not re.match(r"wxhook\.(server|tools|testing)\b", name), (path, name)


def test_the_serving_path_never_imports_the_dev_tools():
    code = ("import sys, wxhook.server.app, wxhook.server.serving; "
            "print(sorted(m for m in sys.modules "
            "if m.startswith(('wxhook.tools', 'wxhook.testing'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory):
    """A virtual environment outside the repo with the built wheel installed."""
    tmp = tmp_path_factory.mktemp("owner")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("wxhook-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = set(os.listdir(site))
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    added = set(os.listdir(site)) - before
    # Its dependencies and mypy, as an owner would install them (from pip's cache here).
    subprocess.run([py, "-m", "pip", "install", "-q", str(wheel), "mypy"], check=True,
                   capture_output=True)
    return tmp, env_dir, added


@pytest.mark.slow
def test_one_top_level_package_with_py_typed(clean_env):
    _tmp, env_dir, added = clean_env
    assert {a for a in added if not a.endswith(".dist-info")} == {"wxhook"}
    sites = (env_dir / "lib").glob("python*/site-packages")
    assert any((p / "wxhook" / "py.typed").exists() for p in sites)
    assert (env_dir / "bin" / "wxhook").exists()


@pytest.mark.slow
@pytest.mark.parametrize("owner_package", ["handlers", "service"])
def test_an_owner_package_named_like_our_folders_loads(clean_env, owner_package):
    tmp, env_dir, _added = clean_env
    owner = tmp / f"owner_{owner_package}"
    (owner / owner_package).mkdir(parents=True)
    (owner / owner_package / "__init__.py").write_text("")
    (owner / owner_package / "mine.py").write_text(HANDLER)
    code = ("import asyncio, importlib;"
            f"from wxhook.testing import HandlerClient;"
            f"r = importlib.import_module('{owner_package}.mine').router\n"
            "async def main():\n"
            "    async with HandlerClient(r) as c:\n"
            "        print((await c.subscribe())['Content'])\n"
            "        print((await c.text('ping'))['Content'])\n"
            "asyncio.run(main())")
    out = subprocess.run([env_dir / "bin" / "python", "-c", code], cwd=owner, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    # The push log lines share stdout; the answers are whole lines of their own.
    lines = out.stdout.splitlines()
    assert "Hi from the owner's own handlers package" in lines
    assert "pong" in lines


@pytest.mark.slow
def test_the_guide_type_checks_against_the_installed_package(clean_env):
    tmp, env_dir, _added = clean_env
    work = tmp / "guide"
    work.mkdir()
    files = [work / "owner_handlers.py"]
    files[0].write_text(HANDLER)
    guide = (ROOT / "docs" / "handlers.md").read_text(encoding="utf-8")
    for i, block in enumerate(_python_blocks(guide)):
        f = work / f"guide_block_{i}.py"
        f.write_text(block)
        files.append(f)
    for example in (ROOT / "docs" / "examples").glob("*.py"):
        (work / example.name).write_text(example.read_text(encoding="utf-8"))
        files.append(work / example.name)
    out = subprocess.run([env_dir / "bin" / "python", "-m", "mypy", "--strict",
                          "--no-incremental", *map(str, files)], cwd=work, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
