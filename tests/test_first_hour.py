"""The path a new account owner takes, as the README tells it, in a directory of their own:
`cp .env.example .env`, fill in the credentials, `wxhook check`, their own handler package
answering through `wxhook serve`, and a typo in a setting stopping `make run` plainly."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, WXHOOK, free_port, process, sandbox_process
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

pytestmark = pytest.mark.slow

APP_ID, SECRET, TOKEN = "wxf1r5th0ur0000001", "first-hour-app-secret", "firstHourToken1"
HANDLERS = '''
from wxhook.router import Context, Router
from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import TextReply

router = Router()


def asks_price(msg: InboundMessage) -> bool:
    return isinstance(msg, TextMessage) and "价格" in msg.content


@router.message("text", match=asks_price)
async def prices(msg: InboundMessage, ctx: Context) -> TextReply:
    return TextReply("See our price list: https://example.com/prices")
'''


def edit(dotenv: Path, name: str, value: str) -> None:
    """Set NAME in .env as an owner does in an editor: the line `NAME=` or `# NAME=...`."""
    text, n = re.subn(rf"(?m)^(# )?{name}=.*$", f"{name}={value}", dotenv.read_text())
    assert n == 1, name
    dotenv.write_text(text)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WECHAT_", "WXHOOK_", "PROMETHEUS_")) and k != "REDIS_URL"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def owner(tmp_path: Path) -> Path:
    """The owner's directory: the two files of the clone the path uses, nothing else."""
    for name in (".env.example", "Makefile"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_first_hour(owner: Path):
    dotenv = owner / ".env"
    shutil.copy(owner / ".env.example", dotenv)                      # cp .env.example .env
    edit(dotenv, "WECHAT_APP_ID", APP_ID)
    edit(dotenv, "WECHAT_APP_SECRET", SECRET)
    edit(dotenv, "WECHAT_TOKEN", TOKEN)

    with sandbox_process(cwd=owner) as api:                          # reads the same .env
        edit(dotenv, "WECHAT_API_BASE", api)
        edit(dotenv, "WECHAT_OAUTH_BASE", api)
        checked = run([WXHOOK, "check"], owner)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "result: ready to serve" in checked.stdout
        assert SECRET not in checked.stdout

        (owner / "my_account").mkdir()
        (owner / "my_account" / "__init__.py").write_text("")
        (owner / "my_account" / "handlers.py").write_text(HANDLERS)
        edit(dotenv, "WXHOOK_HANDLERS", "my_account.handlers:router")
        port = free_port()
        with process([WXHOOK, "serve", "--port", str(port)], cwd=owner,
                     ready_url=f"http://127.0.0.1:{port}/healthz"):
            url = f"http://127.0.0.1:{port}/wechat"
            openid = "oFirstHourFollower0000000001"
            asked = sign_push(push_xml("text", openid=openid, text="价格多少?"),
                              token=TOKEN, openid=openid)
            r = httpx.post(url, params=asked.params, content=asked.body)
            followed = sign_push(push_xml("subscribe", openid=openid), token=TOKEN,
                                 openid=openid)
            s = httpx.post(url, params=followed.params, content=followed.body)
        assert decode_reply(r.content, crypto=None)["Content"] == \
            "See our price list: https://example.com/prices"
        assert decode_reply(s.content, crypto=None)["Content"].startswith("Welcome, ")

    edit(dotenv, "WECHAT_TOKEN", "my-token-1")                       # a typo
    venv = Path(WXHOOK).parent.parent  # the venv running these tests (make test: .venv)
    made = run(["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed",
                "run"], owner)
    assert made.returncode != 0
    assert made.stderr.splitlines()[0] == (
        "wxhook: invalid settings: WECHAT_TOKEN: may contain only A-Z a-z 0-9, found '-'")
    assert "my-token-1" not in made.stdout + made.stderr
    assert "wxhook dev" not in made.stdout and "sandbox" not in made.stdout
