"""Graceful shutdown of a real server process: SIGTERM loses nothing it acknowledged.

The default router has no handler slow enough to overrun (the greeting says "Welcome!" in
time by policy), so these tests run the production app factory with one extra, test-only
router in a real process (`main()` below), served by uvicorn with `wxhook serve`'s options.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    TOKEN,
    WXHOOK,
    free_port,
    isolated_redis,
    process,
    sandbox_process,
    server_env,
)
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

pytestmark = pytest.mark.slow

# uvicorn re-raises the SIGTERM it handled once shutdown is complete (systemd and docker count
# that as a clean stop); the "shutdown" log line is what proves the drain ran.
CLEAN_EXIT = (0, -signal.SIGTERM)


# -- the process under test (imported by the child; never run by pytest) ------------------------

def main() -> None:
    """A wxhook server whose text handler "slow:<s>" sleeps <s> seconds before answering."""
    import uvicorn

    import wxhook.server.app
    from wxhook.defaults import default_router
    from wxhook.replies import TextReply
    from wxhook.router import Router
    from wxhook.server.config import load_settings
    from wxhook.server.logs import configure_logging

    if os.environ.get("TEST_SHUTDOWN_GRACE"):
        wxhook.server.app.SHUTDOWN_GRACE = float(os.environ["TEST_SHUTDOWN_GRACE"])
    router = Router()

    async def slow(msg: Any, ctx: Any) -> TextReply:
        await asyncio.sleep(float(msg.content.split(":", 1)[1]))
        return TextReply(f"done {msg.content}")

    router.register(slow, msg_types=("text",), match=lambda m: m.content.startswith("slow:"))
    router.include(default_router())
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        from wxhook.server.serving import uvicorn_kwargs
        options = uvicorn_kwargs()
    except ImportError:  # keep the test independent of the CLI's internals
        options = {"access_log": False, "log_config": None, "timeout_graceful_shutdown": 15}
    uvicorn.run(wxhook.server.app.create_app(settings, router=router), host="127.0.0.1",
                port=int(os.environ["TEST_PORT"]), **options)


# -- helpers ---------------------------------------------------------------------------------------

def new_openid() -> str:
    return "o" + secrets.token_hex(14)[:27]


def slow_push(openid: str, seconds: float) -> Any:
    return sign_push(push_xml("text", openid=openid, text=f"slow:{seconds}"), token=TOKEN,
                     openid=openid)


class Server:
    def __init__(self, api: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = server_env(api, TEST_PORT=str(self.port), **env)
        self.log = log

    def run(self) -> Any:
        args = [sys.executable, "-c", "from tests.test_shutdown import main; main()"]
        return process(args, env=self.env, ready_url=self.url + "/healthz", log_path=self.log)


def in_thread(fn: Any, *args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            out["response"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the assertions below report it
            out["error"] = exc
        out["took"] = time.monotonic() - started
    out["thread"] = threading.Thread(target=run)
    out["thread"].start()
    return out


def send(url: str, push: Any) -> httpx.Response:
    return httpx.post(url + "/wechat", params=push.params, content=push.body, timeout=10)


def sent(api: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(api + "/_sandbox/stats").json()["sent"]
    return data


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # not a log line (a traceback, uvicorn's banner)
            events.append(json.loads(line))
    return events


# -- the tests -------------------------------------------------------------------------------------

def test_sigterm_finishes_in_flight_pushes_and_delivers_late_replies(tmp_path):
    with sandbox_process() as api:
        server = Server(api, tmp_path / "server.log", WXHOOK_DEADLINE="1.0")
        with server.run() as proc:
            quick, late = new_openid(), new_openid()
            a = in_thread(send, server.url, slow_push(quick, 0.5))  # answers in time
            b = in_thread(send, server.url, slow_push(late, 2.5))   # overruns: custom/send
            time.sleep(0.25)
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # stopped accepting, still draining
                httpx.get(server.url + "/healthz", timeout=1)
            assert proc.poll() is None
            a["thread"].join(5)
            b["thread"].join(5)
            assert proc.wait(timeout=15) in CLEAN_EXIT
        assert "error" not in a and "error" not in b
        assert decode_reply(a["response"].content, crypto=None)["Content"] == "done slow:0.5"
        # "success": the deadline answered, before the 2.5 s handler; inside WeChat's window.
        assert b["response"].status_code == 200 and b["response"].content == b"success"
        assert b["took"] < 5.0
        messages = sent(api)
    assert [m["touser"] for m in messages] == [late]
    assert messages[0]["text"]["content"] == "done slow:2.5"
    shutdown = [e for e in log_events(tmp_path / "server.log") if e.get("event") == "shutdown"]
    assert shutdown and shutdown[0]["late_deliveries_abandoned"] == 0


def test_late_replies_past_the_grace_period_are_logged_not_lost_silently(tmp_path):
    with sandbox_process() as api:
        log = tmp_path / "server.log"
        server = Server(api, log, WXHOOK_DEADLINE="0.5", TEST_SHUTDOWN_GRACE="0.5")
        openid = new_openid()
        with server.run() as proc:
            r = send(server.url, slow_push(openid, 60))
            assert r.content == b"success"
            started = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=10) in CLEAN_EXIT
            assert time.monotonic() - started < 5
        assert sent(api) == []
    events = log_events(log)
    abandoned = [e for e in events if e.get("event") == "late_delivery_abandoned"]
    assert len(abandoned) == 1 and abandoned[0]["openid"] != openid  # masked, but there
    assert abandoned[0]["openid"].endswith(openid[-4:])
    assert any(e.get("event") == "shutdown" and e.get("late_deliveries_abandoned") == 1
               for e in events)


SLOW_HANDLERS = """
import asyncio

from wxhook.router import Router
from wxhook.replies import TextReply

router = Router()


async def slow(msg, ctx):
    await asyncio.sleep(float(msg.content.split(":", 1)[1]))
    return TextReply(f"done {msg.content}")


router.register(slow, msg_types=("text",), match=lambda m: m.content.startswith("slow:"))
"""


@pytest.mark.parametrize("to_group", [True, False], ids=["process-group", "supervisor-only"])
def test_sigterm_with_workers_refuses_new_connections_and_finishes_in_flight(tmp_path,
                                                                             to_group):
    # `wxhook serve --workers 2`: uvicorn's supervisor holds the listening socket too, so
    # unless it lets go at SIGTERM the kernel keeps queueing connections nobody will accept.
    # systemd's KillMode=mixed (deploy/systemd) signals the supervisor only; docker and
    # Ctrl-C reach the whole group.
    (tmp_path / "acct_slow").mkdir()
    (tmp_path / "acct_slow" / "__init__.py").write_text("")
    (tmp_path / "acct_slow" / "handlers.py").write_text(SLOW_HANDLERS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with isolated_redis(tmp_path) as redis_url, sandbox_process() as api:
        env = server_env(api, REDIS_URL=redis_url, WXHOOK_HANDLERS="acct_slow.handlers:router")
        args = [WXHOOK, "serve", "--port", str(port), "--workers", "2"]
        with process(args, env=env, ready_url=url + "/healthz", cwd=tmp_path,
                     log_path=tmp_path / "server.log") as proc:
            openid = new_openid()
            push = in_thread(send, url, slow_push(openid, 3.0))
            time.sleep(0.3)
            if to_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                os.kill(proc.pid, signal.SIGTERM)  # passed on to the workers within 0.5 s
            time.sleep(1.0)
            # Refused, not queued: a queued connection is accepted by the kernel, then reset
            # or left to time out (ReadError, ReadTimeout); it never raises ConnectError.
            with pytest.raises(httpx.ConnectError):
                httpx.get(url + "/healthz", timeout=3)
            push["thread"].join(10)
            assert proc.wait(timeout=20) in CLEAN_EXIT
    assert "error" not in push, push.get("error")
    assert decode_reply(push["response"].content, crypto=None)["Content"] == "done slow:3.0"
