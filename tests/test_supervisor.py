"""`wxhook serve --workers N`'s supervisor (service/supervisor.py): what it needs of uvicorn's
Multiprocess, and SIGTERM at any moment ending every worker."""

import os
import random
import signal
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn
from uvicorn.supervisors import multiprocess

from tests.support import (
    WXHOOK,
    catches,
    free_port,
    group_members,
    process,
    server_env,
    wait_http,
    worker_pids,
)
from wxhook.server.supervisor import _Supervisor


def test_sighup_reaches_every_worker_through_uvicorns_own_dispatch():
    # What the subclass needs from uvicorn (pyproject pins the versions that have it): a
    # constructor taking (config, sockets), a `processes` list whose items have `pid`, and
    # SIGHUP queued in `signal_queue` and dispatched by name to `handle_hup`.
    saved = {sig: signal.getsignal(sig) for sig in multiprocess.SIGNALS}
    worker = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGHUP, lambda *_: sys.exit(7))\n"
         "print('ready', flush=True)\ntime.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "ready\n"
        supervisor = _Supervisor(uvicorn.Config("wxhook.server.app:app", workers=2), sockets=[])
        assert isinstance(multiprocess.Process.pid, property)
        supervisor.processes.append(worker)  # has `pid`, as uvicorn's Process does
        supervisor.signal_queue.append(signal.SIGHUP)
        supervisor.handle_signals()
        assert worker.wait(timeout=10) == 7  # passed on, not a restart of the workers
    finally:
        worker.kill()
        worker.wait()
        worker.stdout.close()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# -- SIGTERM whatever the supervisor is doing: every worker ends, the supervisor exits 0 ------

def _start(redis_url, log):
    """`serve --workers 2`, not waited for; no WeChat API call is made before the signal."""
    port = free_port()
    args = [WXHOOK, "serve", "--port", str(port), "--workers", "2"]
    env = server_env("http://127.0.0.1:9", REDIS_URL=redis_url)
    return process(args, env=env, ready_url=None, log_path=log), f"http://127.0.0.1:{port}"


def _until(check, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met in {timeout} s")


def _stopped(proc, log, what):
    """The supervisor's exit status after SIGTERM; every process it started is gone."""
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None
    _until(lambda: not group_members(proc.pid), timeout=10,
           what=f"{what}: every worker gone (left: {group_members(proc.pid)})")
    tail = log.read_text(errors="replace")[-3000:]
    assert code == 0, f"{what}: supervisor exit {code}\n{tail}"
    assert "Traceback" not in tail, f"{what}\n{tail}"


@pytest.mark.slow
def test_sigterm_while_a_hung_worker_is_being_replaced(tmp_path, redis_url):
    log = tmp_path / "server.log"
    proc_cm, url = _start(redis_url, log)
    with proc_cm as proc:
        wait_http(f"{url}/healthz", proc=proc, log_path=log, timeout=30)
        _until(lambda: len(worker_pids(proc.pid)) == 2)
        hung = min(worker_pids(proc.pid))
        os.kill(hung, signal.SIGSTOP)
        # At its next look the supervisor waits for the stopped worker to answer (uvicorn's
        # timeout_worker_healthcheck, 5 s), then kills and replaces it: the signal comes in
        # that respawn.
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGTERM)
        _stopped(proc, log, "SIGTERM during the replacement of a hung worker")


@pytest.mark.slow
def test_sigterm_at_random_moments_of_start_up_and_respawn(tmp_path, redis_url):
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    for run in range(6):
        log = tmp_path / f"run{run}.log"
        proc_cm, _ = _start(redis_url, log)
        with proc_cm as proc:
            _until(lambda: catches(proc.pid, signal.SIGTERM) or proc.poll() is not None)
            if run % 2:  # a worker dies as it starts; the signal comes while it is replaced
                _until(lambda: len(worker_pids(proc.pid)) == 2 or proc.poll() is not None)
                os.kill(min(worker_pids(proc.pid)), signal.SIGKILL)
                delay, after = rnd.uniform(0, 1.5), "a worker was killed"
            else:  # the workers are being started
                delay, after = rnd.uniform(0, 2.5), "the supervisor began"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGTERM)
            _stopped(proc, log, f"run {run} (seed {seed}): SIGTERM {delay:.2f} s after {after}")


@pytest.mark.slow
def test_sighup_at_every_moment_of_the_workers_start_up_ends_none(tmp_path, redis_url):
    # `systemctl reload` as often as one likes while serve starts: every SIGHUP is passed on
    # to workers that may not have run a line of Python yet (spawned with it blocked).
    log = tmp_path / "server.log"
    proc_cm, url = _start(redis_url, log)
    with proc_cm as proc:
        _until(lambda: catches(proc.pid, signal.SIGHUP) or proc.poll() is not None)
        seen: set[int] = set()
        answered = None
        end = time.monotonic() + 40  # workers killed as they start would never answer
        while proc.poll() is None and time.monotonic() < end and (
                answered is None or time.monotonic() < answered + 0.5):
            os.kill(proc.pid, signal.SIGHUP)
            seen |= worker_pids(proc.pid)
            if answered is None:
                try:
                    httpx.get(f"{url}/healthz", timeout=0.5)
                    answered = time.monotonic()
                except httpx.HTTPError:
                    pass
            time.sleep(0.03)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert answered is not None, f"never served: workers seen {sorted(seen)}"
        # The two workers it started are the two serving: none ended and was replaced.
        assert seen == worker_pids(proc.pid) and len(seen) == 2, log.read_text()[-3000:]
