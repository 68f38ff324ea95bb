"""Helpers for tests that drive real processes (free ports, servers, readiness waits), and the
published vectors."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
WXHOOK = str(Path(sys.executable).parent / "wxhook")
SANDBOX_APP_ID = "wx00000000sandbox"
SANDBOX_SECRET = "sandbox-app-secret-not-real"
TOKEN = "wxhookTestToken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def examples(n: int) -> int:
    """A property test's example count: n, or WXHOOK_FUZZ_SCALE (20) times n in `make fuzz`."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz":
        return n * int(os.environ.get("WXHOOK_FUZZ_SCALE", "20"))
    return n


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now, and never one this run handed out before:
    the kernel may give a released port again at once, and a cluster node given the same
    port twice (client and bus) cannot start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_http(url: str, *, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None,
              log_path: Path | None = None) -> None:
    """Poll `url` until it answers (any status), or fail with the process's output."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            out = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{out}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def process(args: list[str], *, env: dict[str, str] | None = None, ready_url: str | None,
            log_path: Path | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process (in `cwd`, default the repository), wait until `ready_url` answers
    (None: yield at once), stop it (SIGTERM, then SIGKILL).

    Output always goes to a file: a pipe nobody reads fills up and blocks a chatty server.
    """
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("WECHAT_", "WXHOOK_", "REDIS_URL", "PROMETHEUS_"))}
    full_env.update(env or {})
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="wxhook-test-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd or ROOT, start_new_session=True)
        try:
            if ready_url is not None:
                wait_http(ready_url, proc=proc, log_path=log_path)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def worker_pids(supervisor: int) -> set[int]:
    """The uvicorn workers `wxhook serve --workers N` (pid `supervisor`) has right now."""
    try:
        kids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return set()
    pids = set()
    for kid in map(int, kids):
        try:  # multiprocessing's resource tracker is a child too; workers run spawn_main
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                pids.add(kid)
        except OSError:
            pass
    return pids


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` is true, asking every 0.1 s; AssertionError after `timeout` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


class Workers:
    """The workers of `wxhook serve --workers N` (pid `supervisor`) and each one's last answer
    to `ask` (a check that names the pid answering, asked on a new connection each time so
    every worker gets asked)."""

    def __init__(self, supervisor: int, ask: Callable[[], dict[str, Any]]) -> None:
        self.supervisor = supervisor
        self.ask = ask
        self.serving = worker_pids(supervisor)
        self.seen: dict[int, dict[str, Any]] = {}

    def every(self, check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
        """For until(): every worker serving now has answered, and `check` holds for each."""
        def met() -> bool:
            s = self.ask()
            self.seen[s["pid"]] = s
            # The workers serving now: on a loaded machine the supervisor may have replaced
            # one that missed its health ping.
            self.serving.clear()
            self.serving.update(worker_pids(self.supervisor))
            return set(self.seen) >= self.serving and all(
                check(self.seen[p]) for p in self.serving)
        return met

    def kill_one(self, *, replaced_within: float) -> tuple[int, int]:
        """SIGKILL a worker; (its pid, its replacement's, whose answer is in `seen`)."""
        victim = min(self.serving)
        os.kill(victim, signal.SIGKILL)
        until(lambda: len(worker_pids(self.supervisor) - self.serving) == 1,
              timeout=replaced_within)
        (new,) = worker_pids(self.supervisor) - self.serving
        self.seen.clear()
        until(lambda: new in self.seen or bool(
            self.seen.update({(s := self.ask())["pid"]: s})), timeout=30)
        return victim, new


def catches(pid: int, sig: int) -> bool:
    """True once process `pid` has a handler of its own for `sig` (/proc's SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


def group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` still running (zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


@contextmanager
def sandbox_process(*, cwd: Path | None = None, env: dict[str, str] | None = None,
                    **opts: str) -> Iterator[str]:
    """`wxhook sandbox` on a free port; yields its base URL.

    It reads settings as serve does (environment, .env): by default it runs in an empty
    directory, so a developer's .env in the repository cannot change the account it serves.
    """
    port = free_port()
    args = [WXHOOK, "sandbox", "--port", str(port)]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}"] + ([v] if v else [])
    with tempfile.TemporaryDirectory(prefix="wxhook-sandbox-") as empty, \
            process(args, env=env, ready_url=f"http://127.0.0.1:{port}/",
                    cwd=cwd or Path(empty)):
        yield f"http://127.0.0.1:{port}"


def server_env(api_base: str, **extra: str) -> dict[str, str]:
    """The environment of a wxhook server talking to a sandbox at `api_base`."""
    env = {"WECHAT_APP_ID": SANDBOX_APP_ID, "WECHAT_APP_SECRET": SANDBOX_SECRET,
           "WECHAT_TOKEN": TOKEN, "WECHAT_ENCODING_AES_KEY": AES_KEY,
           "WECHAT_API_BASE": api_base, "WECHAT_OAUTH_BASE": api_base,
           "WXHOOK_LOG_FORMAT": "json"}
    env.update(extra)
    return env


@contextmanager
def server_process(api_base: str, *, workers: int = 1, log_path: Path | None = None,
                   cwd: Path | None = None, **extra: str) -> Iterator[str]:
    """`wxhook serve` on a free port against `api_base`; yields its base URL."""
    port = free_port()
    args = [WXHOOK, "serve", "--port", str(port), "--workers", str(workers)]
    with process(args, env=server_env(api_base, **extra),
                 ready_url=f"http://127.0.0.1:{port}/healthz", log_path=log_path, cwd=cwd):
        yield f"http://127.0.0.1:{port}"


def need_redis_server() -> None:
    """Skip (or, under WXHOOK_REQUIRE_REDIS=1, fail) when redis-server is not installed."""
    if shutil.which("redis-server") is None:
        if os.environ.get("WXHOOK_REQUIRE_REDIS") == "1":
            pytest.fail("WXHOOK_REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server); "
                    "set WXHOOK_REQUIRE_REDIS=1 to make this fail")


class RedisServer:
    """A redis-server of the suite's own on a free port: no Redis already running on this
    machine (127.0.0.1:6379 included) is ever touched, flushed or stopped."""

    def __init__(self, tmp: Path, *args: str) -> None:
        need_redis_server()
        self.port = free_port()
        self.tmp = tmp
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers."""
        conf = [a for a in self.args if a.endswith(".conf")]  # must come first
        rest = [a for a in self.args if a not in conf and a != "--tls-port"]
        ports = ["--port", "0", "--tls-port", str(self.port)] if "--tls-port" in self.args \
            else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            ["redis-server", *conf, *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp), *rest],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        """SIGKILL: an outage, not a graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextmanager
def redis_server(tmp: Path, *args: str) -> Iterator[RedisServer]:
    """A private redis-server for tests that stop it, require a password, or speak TLS."""
    server = RedisServer(tmp, *args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def isolated_redis(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server for one test: exact counts (one token request, one lookup)
    cannot be disturbed by any other test or test run."""
    with redis_server(tmp_path) as srv:
        yield f"redis://127.0.0.1:{srv.port}/0"


@dataclass(frozen=True)
class Vector:
    """A published vector (/work/shared/wechat-protocol.md): the account, and what WeChat's
    own sample code signed, encrypted or decrypted."""

    appid: str
    token: str
    encrypt: str
    plain: bytes
    timestamp: str = ""
    nonce: str = ""
    msg_signature: str = ""
    random: bytes = b""  # the fixed 16-byte prefix the encryption used


_V2_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PG"
    "HQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6"
    "tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp"
    "3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhv"
    "Ql+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)
_V2_PLAIN = "\n".join([
    "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>",
    "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>",
    "<CreateTime>1409735668</CreateTime>",
    "<MsgType><![CDATA[text]]></MsgType>",
    "<Content><![CDATA[abcdteT]]></Content>",
    "<MsgId>6054768590064713728</MsgId>",
    "</xml>",
])
# V2 (official Python sample): a push, encrypted under AES_KEY and signed.
V2 = Vector(appid="wx2c2769f8efd9abc2", token="spamtest", encrypt=_V2_ENCRYPT,
            plain=_V2_PLAIN.encode(), timestamp="1409735669", nonce="1320562132",
            msg_signature="5d197aaffba7e9b25a30732f161a50dee96bd5fa")
# V3 (official Java sample): an encryption under AES_KEY with a fixed random prefix.
V3 = Vector(appid="wxb11529c136998cb6", token="t", plain="我是中文abcd123".encode(),
            random=b"aaaabbbbccccdddd",
            encrypt="jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZ"
                    "GMhkP72vVOfg==")


def dirty_json(sandbox_app: Any, replace: dict[str, bytes]) -> httpx.AsyncClient:
    """The sandbox, with some strings in its JSON answers replaced by raw JSON text: what a
    JSON encoder in Python refuses to write (a lone surrogate's escape), WeChat may send."""
    asgi = httpx.ASGITransport(app=sandbox_app)

    async def handle(request: httpx.Request) -> httpx.Response:
        resp = await asgi.handle_async_request(request)
        body = await resp.aread()
        for placeholder, raw in replace.items():
            body = body.replace(b'"' + placeholder.encode() + b'"', raw)
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        return httpx.Response(resp.status_code, headers=headers, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@asynccontextmanager
async def started(app: Any) -> AsyncIterator[Any]:
    """`app` between its start-up and its shutdown, as uvicorn runs it (httpx's ASGI
    transport skips the lifespan); the heap settling start-up does is undone after."""
    thresholds = gc.get_threshold()
    try:
        async with app.router.lifespan_context(app):
            yield app
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
