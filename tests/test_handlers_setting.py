"""WXHOOK_HANDLERS plugs an owner's routers in front of the defaults, imported from files.

Every module here is a real file on disk imported through the import path (never a module
planted in sys.modules), because that path is what broke for owners.
"""

import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.support import TOKEN, WXHOOK, sandbox_process, server_process
from wxhook.defaults import default_router
from wxhook.errors import SettingsError
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

ECHO = """
from wxhook.router import Context, Router
from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import TextReply

router = Router()
not_a_router = object()


@router.message("text")
async def echo(msg: InboundMessage, ctx: Context) -> TextReply | None:
    if isinstance(msg, TextMessage):
        return TextReply(f"You said: {msg.content}")
    return None
"""


def write_package(root: Path, name: str, body: str, module: str = "handlers") -> None:
    """`root/name/__init__.py` and `root/name/<module>.py`."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / f"{module}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def owner_dir(tmp_path, monkeypatch):
    """A directory on the import path, as `wxhook` makes its working directory."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


async def test_custom_router_answers_before_defaults(make_app, make_settings, make_push,
                                                     owner_dir):
    write_package(owner_dir, "acct_echo", ECHO)
    app = make_app(settings=make_settings(WXHOOK_HANDLERS="acct_echo.handlers:router"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        push = make_push("text", text="hi")
        r = await c.post("/wechat", params=push.params, content=push.body)
        sub = make_push("subscribe")
        s = await c.post("/wechat", params=sub.params, content=sub.body)
    assert decode_reply(r.content, crypto=None)["Content"] == "You said: hi"
    assert decode_reply(s.content, crypto=None)["Content"] == "Welcome, 刺猬宝宝!"


def test_a_malformed_spec_is_refused(make_settings):
    with pytest.raises(SettingsError, match="WXHOOK_HANDLERS"):
        make_settings(WXHOOK_HANDLERS="no-colon")


@pytest.mark.parametrize(("files", "spec", "says"), [
    ({}, "acct_none.handlers:router",
     "no module 'acct_none' on the import path; run wxhook from the directory that holds "
     "acct_none/, or add that directory to PYTHONPATH"),
    ({"acct_a": ECHO}, "acct_a.handler:router", "no module 'acct_a.handler'"),
    ({"acct_b": ECHO}, "acct_b.handlers:routr", "has no 'routr'; define `routr = Router()`"),
    ({"acct_c": ECHO}, "acct_c.handlers:not_a_router",
     "acct_c.handlers.not_a_router is a object, not a wxhook.router.Router"),
    ({"acct_d": "import acct_dependency_not_installed\n"}, "acct_d.handlers:router",
     "importing acct_d.handlers failed: No module named 'acct_dependency_not_installed'"),
    ({"acct_e": "router = 1 / 0\n"}, "acct_e.handlers:router",
     "raised ZeroDivisionError: division by zero ("),
    ({"acct_f": "def broken(:\n"}, "acct_f.handlers:router", "raised SyntaxError: "),
])
def test_an_import_failure_is_one_line_naming_the_module(owner_dir, files, spec, says):
    for name, body in files.items():
        write_package(owner_dir, name, body)
    with pytest.raises(SettingsError) as exc:
        default_router(spec)
    text = str(exc.value)
    assert says in text and "\n" not in text and text.startswith(f"WXHOOK_HANDLERS={spec}: ")
    if "raised" in says:  # the owner's own bug: where it is
        assert str(owner_dir / spec.split(".")[0] / "handlers.py") in text


@pytest.mark.slow
@pytest.mark.parametrize("how", ["working directory", "PYTHONPATH"])
def test_serve_imports_the_owners_package(tmp_path, how):
    """`wxhook serve` started in the owner's directory, or (systemd, a container) anywhere
    with the package's directory on PYTHONPATH."""
    owner, elsewhere = tmp_path / "owner", tmp_path / "state"
    elsewhere.mkdir()
    write_package(owner, "my_account", ECHO)
    where = {"cwd": owner} if how == "working directory" else {
        "cwd": elsewhere, "PYTHONPATH": str(owner)}
    with sandbox_process() as api, server_process(
            api, **where, WXHOOK_HANDLERS="my_account.handlers:router",
            WECHAT_ENCODING_AES_KEY="") as url:
        push = sign_push(push_xml("text", openid="oOwnerTest000000000000000001", text="价格?"),
                         token=TOKEN, openid="oOwnerTest000000000000000001")
        r = httpx.post(url + "/wechat", params=push.params, content=push.body)
    assert decode_reply(r.content, crypto=None)["Content"] == "You said: 价格?"


@pytest.mark.slow
def test_serve_with_a_missing_module_stops_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WECHAT_APP_ID": "wx1234567890abcdef",
           "WECHAT_APP_SECRET": "secret-value-1", "WECHAT_TOKEN": "tokenValue1",
           "WXHOOK_HANDLERS": "my_account.handlers:router"}
    res = subprocess.run([WXHOOK, "serve", "--port", "1"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "wxhook: WXHOOK_HANDLERS=my_account.handlers:router: no module 'my_account' on the "
        "import path; run wxhook from the directory that holds my_account/, or add that "
        "directory to PYTHONPATH"]
    assert res.stdout == ""
