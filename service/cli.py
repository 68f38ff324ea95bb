"""wxhook serve | dev | sandbox | simulate | check."""

from __future__ import annotations

import argparse
import asyncio
import os
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
    from .observability import configure_logging

    settings = _settings_or_exit()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return create_app(settings)


def _uvicorn_kwargs() -> dict[str, Any]:
    return {"loop": "uvloop", "http": "httptools", "access_log": False, "log_config": None,
            "server_header": False, "timeout_graceful_shutdown": 15, "backlog": 4096}


def cmd_serve(args: argparse.Namespace) -> int:
    """The production server."""
    import uvicorn

    settings = _settings_or_exit()
    if args.workers > 1:
        if settings.redis_url is None:
            print("wxhook: --workers N > 1 needs REDIS_URL: without shared state each worker "
                  "would fetch its own access token (killing the others', errcode 40001) and "
                  "a retried push could run twice. Set REDIS_URL, or run one worker.",
                  file=sys.stderr)
            return 2
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                              tempfile.mkdtemp(prefix="wxhook-metrics-"))
    from .observability import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    uvicorn.run("service.cli:app_factory", factory=True, host=args.host, port=args.port,
                workers=args.workers, proxy_headers=True, **_uvicorn_kwargs())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """The server plus the built-in sandbox WeChat API, no credentials needed."""
    import uvicorn

    from .app import create_app
    from .observability import configure_logging
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
    sys.exit(args.func(args))


