"""wxhook serve | dev | sandbox | simulate | check."""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import sys
import tempfile
from typing import Any

from .config import Settings, SettingsError, load_settings


def _settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)


def app_factory() -> Any:
    """The ASGI app from the environment (uvicorn --factory, one per worker)."""
    from .app import create_app
    from .logs import configure_logging

    settings = _settings_or_exit()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    app = create_app(settings)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        return app
    # uvicorn restarts a worker that died (even by SIGKILL); the new one clears the gauges
    # the dead ones left, so a dead worker's "ready 0" or stale token age does not linger.
    for pid in _dead_pids(metrics_dir):
        _forget_gauges(metrics_dir, pid)
    return _ForgetGaugesAtShutdown(app, metrics_dir)


class _ForgetGaugesAtShutdown:
    """ASGI wrapper: a worker that shuts down cleanly removes its own gauge files."""

    def __init__(self, app: Any, metrics_dir: str) -> None:
        self.app = app
        self.metrics_dir = metrics_dir

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]

        async def relay(message: Any) -> None:
            # At the end of the app's shutdown, not at interpreter exit: uvicorn's parent may
            # kill a slow worker after that, and live gauges must not keep a dead worker's value.
            if message["type"] == "lifespan.shutdown.complete":
                _forget_gauges(self.metrics_dir, os.getpid())
            await send(message)

        await self.app(scope, receive, relay)
        return None


def _forget_gauges(metrics_dir: str, pid: int) -> None:
    """Drop a dead process's gauges; its counters and histograms stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    # Ours are max/min gauges, which mark_process_dead keeps: a dead worker's value of
    # wxhook_ready, token age or circuit state means nothing, so drop those files too.
    for path in glob.glob(os.path.join(metrics_dir, f"gauge_*_{pid}.db")):
        os.remove(path)


def _dead_pids(metrics_dir: str) -> set[int]:
    pids: set[int] = set()
    for path in glob.glob(os.path.join(metrics_dir, "*.db")):
        tail = os.path.basename(path)[:-3].rpartition("_")[2]
        if tail.isdigit() and not _alive(int(tail)):
            pids.add(int(tail))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _prepare_metrics_dir() -> str | None:
    """Parent only, before workers start: a clean multiprocess dir; returns one we made."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        made = tempfile.mkdtemp(prefix="wxhook-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        return made
    # Files left by a previous run would add its counts to this run's totals (and a
    # reused pid would write into them): start from zero, as a restarted process does.
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    return None


def _uvicorn_kwargs() -> dict[str, Any]:
    # proxy_headers off: nothing reads the client address, and uvicorn's middleware for it
    # costs ~5% of a push. nginx logs the real address (deploy/nginx).
    return {"loop": "uvloop", "http": "httptools", "access_log": False, "log_config": None,
            "server_header": False, "timeout_graceful_shutdown": 15, "backlog": 4096,
            "proxy_headers": False}


def cmd_serve(args: argparse.Namespace) -> int:
    """The production server."""
    import uvicorn

    settings = _settings_or_exit()
    if args.workers > 1 and settings.redis_url is None:
        print("wxhook: --workers N > 1 needs REDIS_URL: without shared state each worker "
              "would fetch its own access token (killing the others', errcode 40001) and "
              "a retried push could run twice. Set REDIS_URL, or run one worker.",
              file=sys.stderr)
        return 2
    made = _prepare_metrics_dir() if args.workers > 1 or os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR") else None
    from .logs import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        uvicorn.run("service.cli:app_factory", factory=True, host=args.host, port=args.port,
                    workers=args.workers, **_uvicorn_kwargs())
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """The server plus the built-in sandbox WeChat API, no credentials needed."""
    import uvicorn

    from .app import create_app
    from .logs import configure_logging
    from .sandbox import create_sandbox

    sb_port = args.sandbox_port or args.port + 1
    base = f"http://127.0.0.1:{sb_port}"
    settings = _settings_or_exit(WXHOOK_SANDBOX=True, WECHAT_API_BASE=base,
                                 WECHAT_OAUTH_BASE=base,
                                 PUBLIC_BASE_URL=f"http://127.0.0.1:{args.port}")
    configure_logging(level=settings.log_level, fmt=os.environ.get("WXHOOK_LOG_FORMAT", "console"))
    sandbox = create_sandbox(appid=settings.app_id,
                             secret=settings.app_secret.get_secret_value())
    servers = [
        uvicorn.Server(uvicorn.Config(create_app(settings), host=args.host, port=args.port,
                                      **_uvicorn_kwargs())),
        uvicorn.Server(uvicorn.Config(sandbox, host="127.0.0.1", port=sb_port,
                                      **_uvicorn_kwargs())),
    ]
    url = f"http://127.0.0.1:{args.port}"
    print(f"""
wxhook dev: the server on {url}, the sandbox WeChat API on {base}
  (built-in sandbox credentials: appid {settings.app_id}, no real account is touched)

Try next, in another terminal:
  .venv/bin/wxhook simulate subscribe --url {url}/wechat
  .venv/bin/wxhook simulate text --text help --url {url}/wechat --aes
  curl {url}/readyz
  open {url}/oauth/login?next=/me   (walks the OAuth flow against the sandbox)
""", flush=True)

    async def run() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(run())
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The stand-in WeChat API alone."""
    import uvicorn

    from .config import SANDBOX_APP_ID, SANDBOX_APP_SECRET
    from .sandbox import create_sandbox

    app = create_sandbox(appid=args.appid or os.environ.get("WECHAT_APP_ID") or SANDBOX_APP_ID,
                         secret=args.secret or os.environ.get("WECHAT_APP_SECRET")
                         or SANDBOX_APP_SECRET,
                         latency=args.latency, empty_nicknames=args.empty_nicknames)
    print(f"wxhook sandbox on http://{args.host}:{args.port} (control API under /_sandbox/)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, **_uvicorn_kwargs())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Sign (and encrypt) a push exactly as WeChat does, send it, print the decoded reply."""
    from .simulate import simulate

    settings = _settings_or_exit(WXHOOK_SANDBOX=True)
    return asyncio.run(simulate(settings, kind=args.kind, url=args.url, openid=args.openid,
                                text=args.text, event_key=args.event_key, aes=args.aes,
                                repeat=args.repeat))


def cmd_check(args: argparse.Namespace) -> int:
    """Validate settings and reach the WeChat API; non-zero exit on failure."""
    from .check import run_check

    return asyncio.run(run_check())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests)."""
    p = argparse.ArgumentParser(prog="wxhook", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the production server (settings from env and .env)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_serve)
    d = sub.add_parser("dev", help="the server plus the built-in sandbox; no credentials")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--sandbox-port", type=int, default=0)
    d.set_defaults(func=cmd_dev)
    b = sub.add_parser("sandbox", help="the stand-in WeChat API alone")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=8001)
    b.add_argument("--appid", default="")
    b.add_argument("--secret", default="")
    b.add_argument("--latency", type=float, default=0.0)
    b.add_argument("--empty-nicknames", action="store_true",
                   help="answer user/info like WeChat since 2021-12-27 (no nickname)")
    b.set_defaults(func=cmd_sandbox)
    m = sub.add_parser("simulate", help="send a signed push as WeChat would; print the reply")
    m.add_argument("kind", help="subscribe, unsubscribe, SCAN, CLICK, ... or text, image, ...")
    m.add_argument("--url", default="http://127.0.0.1:8000/wechat")
    m.add_argument("--openid", default="oSandboxDemoFollower00000001")
    m.add_argument("--text", default="hello")
    m.add_argument("--event-key", default="")
    m.add_argument("--aes", action="store_true", help="encrypt as in safe mode")
    m.add_argument("--repeat", type=int, default=1, help="send the same push N times (retries)")
    m.set_defaults(func=cmd_simulate)
    c = sub.add_parser("check", help="validate settings and reach the WeChat API")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except BrokenPipeError:  # `wxhook simulate ... | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


