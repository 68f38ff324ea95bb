"""Reloading the rules in a real `wxhook serve`: on a file change and on SIGHUP, good and bad
files, one worker and several."""

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import OPENID
from tests.support import TOKEN, WXHOOK, free_port, process, sandbox_process, server_env
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

pytestmark = pytest.mark.slow

GOOD = "keywords: [{name: hours, equal: hours, replies: ['%s']}]\n"
BROKEN = "keywords: [{name: hours, regex: ['('], replies: []}]\n"


def _ask(url):
    xml = push_xml("text", openid=OPENID, text="hours")
    push = sign_push(xml, token=TOKEN, openid=OPENID)
    r = httpx.post(f"{url}/wechat", params=push.params, content=push.body, timeout=5)
    return decode_reply(r.content, crypto=None).get("Content")


def _rules(url):
    # A new connection each time, so several workers all get asked.
    r = httpx.get(f"{url}/readyz?verbose", timeout=5, headers={"connection": "close"})
    assert r.status_code == 200, r.text
    return r.json()["checks"]["rules"]


def _until(check, timeout=8.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _write_keeping_stamp(path, text):
    """Change the content but not what the watcher looks at: only SIGHUP can reload it."""
    st = os.stat(path)
    assert len(text.encode()) == st.st_size
    with open(path, "r+", encoding="utf-8") as f:  # same inode
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _serve(base, path, tmp_path, *, workers=1, **extra):
    port = free_port()
    log = tmp_path / "server.log"
    args = [WXHOOK, "serve", "--port", str(port), "--workers", str(workers)]
    env = server_env(base, WXHOOK_RULES=str(path), **extra)
    return process(args, env=env, ready_url=f"http://127.0.0.1:{port}/healthz",
                   log_path=log), f"http://127.0.0.1:{port}", log


def test_file_change_and_sighup_good_and_bad(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD % "v1")
    with sandbox_process() as base:
        proc_cm, url, log = _serve(base, path, tmp_path)
        with proc_cm as proc:
            assert _ask(url) == "v1"
            first = _rules(url)["version"]
            # A file change: picked up without a signal.
            path.write_text(GOOD % "v2")
            _until(lambda: _ask(url) == "v2")
            assert _rules(url)["version"] != first
            # A broken file: the last good rules stay, still ready, and it is said why.
            path.write_text(BROKEN)
            _until(lambda: _rules(url)["last_error"] is not None)
            assert _ask(url) == "v2"
            assert "bad regex" in _rules(url)["last_error"]
            metrics = httpx.get(f"{url}/metrics").text
            assert 'wxhook_rules_reloads_total{result="failed"} 1.0' in metrics
            assert "rules_reload_failed" in log.read_text()
            # SIGHUP alone (the watcher cannot see this change): a good file is loaded ...
            path.write_text(GOOD % "v3")
            _until(lambda: _ask(url) == "v3")
            _write_keeping_stamp(path, GOOD % "v4")
            time.sleep(1.5)
            assert _ask(url) == "v3"
            os.kill(proc.pid, signal.SIGHUP)
            _until(lambda: _ask(url) == "v4")
            assert _rules(url)["loaded_by"] == "SIGHUP"
            # ... and a bad one is refused the same way.
            _write_keeping_stamp(path, BROKEN.ljust(len(GOOD % "v4") - 1) + "\n")
            os.kill(proc.pid, signal.SIGHUP)
            _until(lambda: 'result="failed"} 2.0' in httpx.get(f"{url}/metrics").text)
            assert _ask(url) == "v4"
            assert proc.poll() is None


def test_sighup_reaches_every_worker(tmp_path, redis_url):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD % "v1")
    with sandbox_process() as base:
        proc_cm, url, _ = _serve(base, path, tmp_path, workers=2, REDIS_URL=redis_url)
        with proc_cm as proc:
            pids: dict[int, str] = {}
            _until(lambda: len(pids) == 2 or bool(pids.update({(s := _rules(url))["pid"]:
                                                               s["version"]})), timeout=20)
            _write_keeping_stamp(path, GOOD % "v2")
            os.kill(proc.pid, signal.SIGHUP)
            new: dict[int, str] = {}

            def all_reloaded():
                s = _rules(url)
                new[s["pid"]] = s["version"]
                return set(new) == set(pids) and len(set(new.values())) == 1 and \
                    set(new.values()) != set(pids.values())
            _until(all_reloaded, timeout=20)
            assert proc.poll() is None  # the same workers: reloaded in place, not restarted


def test_a_bad_file_at_start_up_refuses_to_start(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)
    env = {**os.environ, **server_env("http://127.0.0.1:9", WXHOOK_RULES=str(path))}
    done = subprocess.run([WXHOOK, "serve", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "bad regex" in done.stderr and "Traceback" not in done.stderr
