"""Reloading the rules in a real `wxhook serve`: on a file change and on SIGHUP, good and bad
files, one worker and several."""

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import OPENID
from tests.support import (
    TOKEN,
    WXHOOK,
    Workers,
    free_port,
    process,
    sandbox_process,
    server_env,
    until,
    wait_http,
    worker_pids,
)
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
    until(check, timeout)


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


# -- SIGHUP never stops a server: without rules, during start-up, with several workers ------

# WXHOOK_HANDLERS whose import takes a while and says when it begins: a start-up (of `serve`,
# then of each worker, which builds the app) with a known moment to send SIGHUP into.
SLOW_IMPORT = """
import os, time
from wxhook.router import Router
open(os.path.join(os.environ["TEST_MARKERS"], f"importing-{os.getpid()}"), "w").close()
time.sleep(1.5)
router = Router()
"""


def _slow_account(tmp_path):
    (tmp_path / "acct_slow_import").mkdir()
    (tmp_path / "acct_slow_import" / "__init__.py").write_text("")
    (tmp_path / "acct_slow_import" / "handlers.py").write_text(SLOW_IMPORT)
    (tmp_path / "markers").mkdir()
    return {"WXHOOK_HANDLERS": "acct_slow_import.handlers:router",
            "TEST_MARKERS": str(tmp_path / "markers")}


def _importing(tmp_path):
    """Pids of the processes that have begun importing the slow handlers."""
    return {int(p.name.rpartition("-")[2]) for p in (tmp_path / "markers").iterdir()}


def _events(log, name):
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def _start(base, tmp_path, *, workers, **extra):
    """`wxhook serve` in tmp_path, not waited for: the test signals it while it starts."""
    port = free_port()
    log = tmp_path / "server.log"
    args = [WXHOOK, "serve", "--port", str(port), "--workers", str(workers)]
    return (process(args, env=server_env(base, **extra), ready_url=None, cwd=tmp_path,
                    log_path=log), f"http://127.0.0.1:{port}", log)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_without_rules_logs_one_line_and_serves_on(tmp_path, redis_url, workers):
    with sandbox_process() as base:
        proc_cm, url, log = _start(base, tmp_path, workers=workers, REDIS_URL=redis_url)
        with proc_cm as proc:
            wait_http(f"{url}/healthz", proc=proc, log_path=log, timeout=30)
            serving = worker_pids(proc.pid) if workers > 1 else {proc.pid}
            assert len(serving) == workers
            for sent in (1, 2):
                os.kill(proc.pid, signal.SIGHUP)
                _until(lambda n=sent * workers: proc.poll() is not None
                       or len(_events(log, "sighup_ignored")) == n)
                assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)  # a worker the signal ended would be gone (and replaced) by now
            assert proc.poll() is None
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            if workers > 1:  # the same workers: none ended and was replaced
                assert worker_pids(proc.pid) == serving
            lines = _events(log, "sighup_ignored")
            assert len(lines) == 2 * workers
            assert {line["pid"] for line in lines} == serving
            assert all("WXHOOK_RULES" in line["why"] for line in lines)


@pytest.mark.parametrize("with_rules", [True, False], ids=["rules", "no-rules"])
def test_sighup_during_start_up_does_not_stop_serve(tmp_path, with_rules):
    extra = _slow_account(tmp_path)
    if with_rules:
        (tmp_path / "rules.yaml").write_text(GOOD % "v1")
        extra["WXHOOK_RULES"] = str(tmp_path / "rules.yaml")
    with sandbox_process() as base:
        proc_cm, url, log = _start(base, tmp_path, workers=1, **extra)
        with proc_cm as proc:
            # The app is being built (its handlers import): SIGHUP now, three times.
            _until(lambda: proc.pid in _importing(tmp_path) or proc.poll() is not None,
                   timeout=20)
            for _ in range(3):
                os.kill(proc.pid, signal.SIGHUP)
                time.sleep(0.1)
            wait_http(f"{url}/healthz", proc=proc, log_path=log, timeout=30)
            if with_rules:  # kept, not lost: the rules were read again once serving
                _until(lambda: _rules(url)["loaded_by"] == "SIGHUP")
            else:
                _until(lambda: len(_events(log, "sighup_ignored")) == 1)
            os.kill(proc.pid, signal.SIGHUP)  # and once serving
            if with_rules:
                _until(lambda: len(_events(log, "rules_reloaded")) == 2)
            else:
                _until(lambda: len(_events(log, "sighup_ignored")) == 2)
            assert proc.poll() is None
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("with_rules", [True, False], ids=["rules", "no-rules"])
def test_sighup_while_workers_start_stops_none_of_them(tmp_path, redis_url, with_rules):
    extra = _slow_account(tmp_path)
    if with_rules:
        (tmp_path / "rules.yaml").write_text(GOOD % "v1")
        extra["WXHOOK_RULES"] = str(tmp_path / "rules.yaml")
    with sandbox_process() as base:
        proc_cm, url, log = _start(base, tmp_path, workers=2, REDIS_URL=redis_url, **extra)
        with proc_cm as proc:
            # Both workers are building their app: the supervisor passes SIGHUP on to them.
            _until(lambda: len(_importing(tmp_path) - {proc.pid}) == 2
                   or proc.poll() is not None, timeout=30)
            first = _importing(tmp_path) - {proc.pid}
            for _ in range(2):
                os.kill(proc.pid, signal.SIGHUP)
                time.sleep(0.2)
            wait_http(f"{url}/healthz", proc=proc, log_path=log, timeout=30)
            if with_rules:
                seen: dict[int, str] = {}

                def both_reloaded():
                    s = _rules(url)
                    seen[s["pid"]] = s["loaded_by"]
                    return set(seen) == first and set(seen.values()) == {"SIGHUP"}
                _until(both_reloaded, timeout=20)
            else:
                _until(lambda: {e["pid"] for e in _events(log, "sighup_ignored")} == first)
            assert proc.poll() is None
            # The workers that were starting are the ones serving: none was replaced.
            assert worker_pids(proc.pid) == first
            assert _importing(tmp_path) - {proc.pid} == first


# -- a worker started again while the file is broken ------------------------------------------

def test_a_worker_started_again_while_the_file_is_broken_runs_the_last_good_rules(
        tmp_path, redis_url):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD % "v1")
    with sandbox_process() as base:
        proc_cm, url, log = _serve(base, path, tmp_path, workers=2, REDIS_URL=redis_url,
                                   PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
        with proc_cm as proc:
            _until(lambda: len(worker_pids(proc.pid)) == 2, timeout=20)
            workers = Workers(proc.pid, lambda: _rules(url))
            states, every_worker = workers.seen, workers.every
            try:
                # Every worker has loaded v1 before the file changes: a worker still
                # starting would read v2 at start, not as a change.
                _until(every_worker(lambda s: s["last_error"] is None), timeout=40)
                first = states[min(workers.serving)]["version"]
                # A good change every worker takes (the last good rules are these, not the
                # ones serve started with), then a broken file every worker refuses.
                path.write_text(GOOD % "v2")
                states.clear()
                _until(every_worker(lambda s: s["last_error"] is None and s["version"] != first
                                    and s["loaded_by"] == "file changed"), timeout=40)
                good = states[min(workers.serving)]["version"]
                path.write_text(BROKEN)
                _until(every_worker(lambda s: s["last_error"] is not None), timeout=40)
            except AssertionError:
                raise AssertionError(f"workers {workers.serving}, answers {states}") from None
            # Its replacement starts on the rules the other worker runs, and says why.
            victim, new = workers.kill_one(replaced_within=20)
            assert states[new]["version"] == good
            assert states[new]["loaded_by"] == "last good copy"
            assert "bad regex" in states[new]["last_error"]
            for _ in range(6):  # whichever worker answers
                assert _ask(url) == "v2"
            time.sleep(2)  # started once, and stays: no crash loop
            assert worker_pids(proc.pid) == workers.serving - {victim} | {new}
            assert proc.poll() is None
    text = log.read_text()
    assert "Traceback" not in text and "RulesError" not in text
