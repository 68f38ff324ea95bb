"""`wxhook dev` with an accounts file: the sandbox stands in for every account (one added
while it runs too), and what dev prints to try next works as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import WXHOOK, free_port, process

pytestmark = pytest.mark.slow

ACCOUNTS = """\
accounts:
  - name: shop
    app_id: wxshop00000000001
    app_secret: ${SHOP_APP_SECRET}
    token: ${SHOP_TOKEN}
  - name: news
    app_id: wxnews00000000002
    app_secret: news-secret-2
    token: newsToken2
    encoding_aes_key: NNNNNNNNNNNNNNNNNNews0123456789abcdefghijkl
    message_mode: safe
"""
THIRD = """\
  - name: third
    app_id: wxthird0000000003
    app_secret: third-secret-3
    token: thirdToken3
"""
DOTENV = "SHOP_APP_SECRET=shop-secret-1\nSHOP_TOKEN=shopToken1\n"


def simulate(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXHOOK_"))}
    env["WXHOOK_ACCOUNTS"] = "accounts.yaml"
    done = subprocess.run([WXHOOK, "simulate", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_dev_stands_in_for_every_account_and_its_hints_work(tmp_path: Path) -> None:
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS, encoding="utf-8")
    (tmp_path / ".env").write_text(DOTENV, encoding="utf-8")  # ${VAR}s, for dev and simulate
    port, sandbox_port = free_port(), free_port()
    log = tmp_path / "dev.log"
    args = [WXHOOK, "dev", "--port", str(port), "--sandbox-port", str(sandbox_port)]
    with process(args, env={"WXHOOK_ACCOUNTS": "accounts.yaml"}, cwd=tmp_path, log_path=log,
                 ready_url=f"http://127.0.0.1:{port}/healthz"):
        time.sleep(0.3)  # the hints are printed as the servers start
        hints = log.read_text()
        assert "the 2 accounts of accounts.yaml" in hints
        tries = re.findall(r"\.venv/bin/wxhook simulate (.+)", hints)
        assert len(tries) == 2 and "--account news --aes" in tries[1]
        for line in tries:  # each as printed: greeted by name from the sandbox
            assert "Content: Welcome, 刺猬宝宝!" in simulate(shlex.split(line), tmp_path)
        # An account added while dev runs: served, and the sandbox knows its appid.
        (tmp_path / "accounts.yaml").write_text(ACCOUNTS + THIRD, encoding="utf-8")
        url = f"http://127.0.0.1:{port}/wechat/third"
        end = time.monotonic() + 15
        while True:
            try:
                out = simulate(["subscribe", "--account", "third", "--url", url], tmp_path)
                break
            except AssertionError:  # 404 until the file is read again (a second)
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        assert "Content: Welcome, 刺猬宝宝!" in out
    text = log.read_text()
    assert "shop-secret-1" not in text and "Traceback" not in text
