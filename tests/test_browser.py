"""The OAuth flow in a real headless Chromium against real server and sandbox processes.

One Chromium invocation follows the whole chain (/oauth/login -> sandbox authorize ->
/oauth/callback -> /me) within one page load, so the state cookie set by the first hop is
there for the callback, exactly as in WeChat's in-app browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, TOKEN, WXHOOK, free_port, process, sandbox_process, server_env
from wxhook.tools.simulate import push_xml, sign_push

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
NICKNAME = "刺猬宝宝"  # the sandbox's demo follower, who authorises by default


@pytest.fixture
def chromium() -> str:
    """Debian's chromium, or a skip that says how to get it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        reason = ("chromium is not installed (run tests/setup.sh as root, or "
                  "apt-get install -y chromium)")
        if os.environ.get("WXHOOK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"WXHOOK_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return found


def browse(chromium: str, url: str, profile_dir: Path, *,
           screenshot: Path | None = None) -> str:
    """Open `url` in a fresh headless Chromium; the final DOM (or "" with a screenshot)."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile_dir}",
            "--window-size=390,844",
            # Only loopback resolves: the test never reaches the internet (the avatar
            # host included, which leaves the grey avatar tile).
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
    args.append(f"--screenshot={screenshot}" if screenshot else "--dump-dom")
    args.append(url)
    done = subprocess.run(args, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[str]:
    """A sandbox process (empty user/info nicknames) and a `wxhook serve` process."""
    with sandbox_process(empty_nicknames="") as api_base:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = server_env(api_base, PUBLIC_BASE_URL=base,
                         WXHOOK_PROFILE_DB=str(tmp_path / "var" / "profiles.sqlite3"))
        with process([WXHOOK, "serve", "--port", str(port)], env=env,
                     ready_url=f"{base}/healthz", log_path=tmp_path / "server.log"):
            yield base


def test_login_in_chromium_then_greeting_by_name(chromium: str, stack: str,
                                                 tmp_path: Path) -> None:
    login = f"{stack}/oauth/login?next=/me"
    dom = browse(chromium, login, tmp_path / "chromium-dom")
    assert f"Hello, {NICKNAME}" in dom, dom[-2000:]
    assert 'name="viewport"' in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "oauth-me.png"
    shot.unlink(missing_ok=True)
    browse(chromium, login, tmp_path / "chromium-shot", screenshot=shot)
    assert shot.stat().st_size > 5_000  # a rendered page, not an empty image

    # user/info answers "" for the nickname (since 2021-12-27); the OAuth profile names them.
    push = sign_push(push_xml("subscribe", openid="oSandboxDemoFollower00000001"),
                     token=TOKEN, openid="oSandboxDemoFollower00000001")
    r = httpx.post(f"{stack}/wechat", params=push.params, content=push.body, timeout=10)
    assert r.status_code == 200
    assert f"Welcome, {NICKNAME}!" in r.text

    server_log = (tmp_path / "server.log").read_text(errors="replace")
    assert "refresh_token" not in server_log


def test_forged_callback_in_chromium_is_a_page(chromium: str, stack: str,
                                               tmp_path: Path) -> None:
    dom = browse(chromium, f"{stack}/oauth/callback?code=abc&state=forged",
                 tmp_path / "chromium")
    assert "Could not verify this sign-in" in dom
    assert "Hello," not in dom


def test_wxhook_dev_walks_the_flow(chromium: str, tmp_path: Path) -> None:
    port, sandbox_port = free_port(), free_port()
    env = {"WXHOOK_PROFILE_DB": str(tmp_path / "dev" / "profiles.sqlite3")}
    args = [WXHOOK, "dev", "--port", str(port), "--sandbox-port", str(sandbox_port)]
    with process(args, env=env, ready_url=f"http://127.0.0.1:{port}/healthz",
                 log_path=tmp_path / "dev.log"):
        dom = browse(chromium, f"http://127.0.0.1:{port}/oauth/login?next=/me",
                     tmp_path / "chromium")
    assert f"Hello, {NICKNAME}" in dom, (tmp_path / "dev.log").read_text(errors="replace")
