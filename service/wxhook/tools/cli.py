"""wxhook serve | dev | sandbox | simulate | check | rules | menu | token: the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any

# Only the standard library at import time: `serve` takes SIGHUP over (main) before the
# slow imports that build the app, each made by the command that needs it.
if TYPE_CHECKING:
    from wxhook.server.config import Settings

EXAMPLE_RULES = "rules.example.yaml"

SANDBOX_PROFILE_DB = "var/profiles-sandbox.sqlite3"
SIMULATE_URL = "http://127.0.0.1:8000/wechat"


def _handlers_or_exit(settings: Settings) -> None:
    """Import the owner's routers once before any worker starts, or say in one line why not."""
    from wxhook.defaults import default_router
    from wxhook.errors import SettingsError

    try:
        default_router(settings.handlers)
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)


def _accounts_or_exit(settings: Settings) -> None:
    """Refuse to start with a bad accounts file (or an account's rules or handlers)."""
    from wxhook.errors import SettingsError
    from wxhook.server.account_hub import load_sources
    from wxhook.server.accounts import load_accounts

    try:
        load_sources(settings, load_accounts(settings.accounts))
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_serve(args: argparse.Namespace) -> int:
    """The production server."""
    from wxhook.server.serving import settings_or_exit, uvicorn_kwargs, warn_if_insecure
    from wxhook.server.supervisor import serve
    from wxhook.tools.rules_cli import rules_or_exit

    settings = settings_or_exit()
    _handlers_or_exit(settings)
    if args.workers > 1 and settings.redis_url is None:
        print("wxhook: --workers N > 1 needs REDIS_URL: without shared state each worker "
              "would fetch its own access token (killing the others', errcode 40001) and "
              "a retried push could run twice. Set REDIS_URL, or run one worker.",
              file=sys.stderr)
        return 2
    rules_or_exit(settings)
    if settings.accounts:
        _accounts_or_exit(settings)
    from wxhook.server.multiproc import prepare_metrics_dir

    made = prepare_metrics_dir() if args.workers > 1 or os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR") else None
    if args.workers > 1 and settings.rules:
        from wxhook.server.rules_source import LAST_GOOD_ENV, save_last_good

        # In the directory the workers share (on tmpfs under systemd, never aged out): the
        # rules a worker started again falls back on while the file on disk is broken.
        copy = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "rules.last-good")
        save_last_good(settings.rules, copy)
        os.environ[LAST_GOOD_ENV] = copy
    if args.workers > 1 and settings.accounts:
        from wxhook.server import accounts_source

        # The same for the accounts file (and, beside it, each rules file it names).
        copy = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "accounts.last-good")
        accounts_source.save_last_good(settings.accounts, copy)
        os.environ[accounts_source.LAST_GOOD_ENV] = copy
    from wxhook.server.logs import configure_logging, get_logger

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    warn_if_insecure(settings, get_logger("wxhook.serve"))
    try:
        serve("wxhook.server.serving:app_factory", factory=True, host=args.host, port=args.port,
              workers=args.workers, **uvicorn_kwargs())
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0


def dev_settings(*, port: int, sandbox_base: str) -> Settings:
    """`wxhook dev`'s settings: the environment and .env, pointed at the local sandbox."""
    from wxhook.server.serving import settings_or_exit

    settings = settings_or_exit(WXHOOK_SANDBOX=True, WECHAT_API_BASE=sandbox_base,
                                 WECHAT_OAUTH_BASE=sandbox_base,
                                 PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
    if "profile_db" not in settings.model_fields_set:
        # What the sandbox's OAuth flow captures must never meet production's followers,
        # even when dev runs with the real appid from .env.
        settings = settings.model_copy(update={"profile_db": SANDBOX_PROFILE_DB})
    return settings


def cmd_dev(args: argparse.Namespace) -> int:
    """The server plus the built-in sandbox WeChat API, no credentials needed."""
    import uvicorn

    from wxhook.server.logs import configure_logging
    from wxhook.server.serving import app_or_exit, uvicorn_kwargs
    from wxhook.tools.rules_cli import rules_or_exit
    from wxhook.tools.sandbox import create_sandbox

    sb_port = args.sandbox_port or args.port + 1
    base = f"http://127.0.0.1:{sb_port}"
    settings = dev_settings(port=args.port, sandbox_base=base)
    if not settings.rules and os.path.exists(EXAMPLE_RULES):  # dev shows the rules at work
        settings = settings.model_copy(update={"rules": EXAMPLE_RULES})
    rules_or_exit(settings)
    configure_logging(level=settings.log_level, fmt=os.environ.get("WXHOOK_LOG_FORMAT", "console"))
    sandbox: Any = create_sandbox(appid=settings.app_id,
                                  secret=settings.app_secret.get_secret_value())
    if settings.accounts:  # it stands in for every account of the file, as the file is now
        from wxhook.tools.sandbox.accounts import following_or_exit

        sandbox = following_or_exit(sandbox, settings.accounts)
    app = app_or_exit(settings)
    servers = [
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                      **uvicorn_kwargs())),
        uvicorn.Server(uvicorn.Config(sandbox, host="127.0.0.1", port=sb_port,
                                      **uvicorn_kwargs())),
    ]
    url = f"http://127.0.0.1:{args.port}"
    # The example rules' default reply would answer "help" too: show one of their keywords.
    text = "hours" if settings.rules == EXAMPLE_RULES else "help"
    rules = (f"\n  replies from {settings.rules} (WXHOOK_RULES to use another)"
             if settings.rules else "")
    if settings.accounts:
        from wxhook.tools.sandbox.accounts import dev_text

        print(dev_text(app.state.accounts.accounts, settings.accounts, url=url, base=base,
                       rules=rules), flush=True)
    else:
        print(f"""
wxhook dev: the server on {url}, the sandbox WeChat API on {base}
  (built-in sandbox credentials: appid {settings.app_id}, no real account is touched){rules}

Try next, in another terminal:
  .venv/bin/wxhook simulate subscribe --url {url}/wechat
  .venv/bin/wxhook simulate text --text {text} --url {url}/wechat --aes
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

    from wxhook.server.serving import settings_or_exit, uvicorn_kwargs
    from wxhook.tools.sandbox import create_sandbox

    # The same settings as serve and check (environment, then .env), so a `check` pointed
    # here finds the account it was configured with; none set: the sandbox's own.
    settings = settings_or_exit(WXHOOK_SANDBOX=True)
    appid = args.appid or settings.app_id
    app: Any = create_sandbox(appid=appid,
                              secret=args.secret or settings.app_secret.get_secret_value(),
                              latency=args.latency, empty_nicknames=args.empty_nicknames)
    if settings.accounts:
        # With an accounts file it stands in for each of its accounts as well.
        from wxhook.tools.sandbox.accounts import following_or_exit

        app = following_or_exit(app, settings.accounts)
        appid = (f"{appid} and the {app.count} accounts of {settings.accounts} "
                 "(read again when it changes)")
    print(f"wxhook sandbox on http://{args.host}:{args.port} for appid {appid} "
          "(control API under /_sandbox/)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, **uvicorn_kwargs())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Sign (and encrypt) a push exactly as WeChat does, send it, print the decoded reply."""
    from wxhook.server.serving import settings_or_exit
    from wxhook.tools.simulate import simulate

    settings = settings_or_exit(WXHOOK_SANDBOX=True)
    url = args.url
    if args.account:
        from wxhook.errors import SettingsError
        from wxhook.server.account_hub import settings_of

        try:
            settings = settings_of(settings, args.account)
        except SettingsError as exc:
            print(f"wxhook: {exc}", file=sys.stderr)
            return 2
        if url == SIMULATE_URL:
            url = f"{SIMULATE_URL}/{args.account}"
    return asyncio.run(simulate(settings, kind=args.kind, url=url, openid=args.openid,
                                text=args.text, event_key=args.event_key, aes=args.aes,
                                repeat=args.repeat, insecure=args.insecure))


def cmd_check(args: argparse.Namespace) -> int:
    """Validate settings and reach the WeChat API; non-zero exit on failure."""
    from wxhook.server.logs import configure_logging
    from wxhook.tools.check import run_check

    # The report is the output: a token refresh or Redis warning line must not cut into it.
    configure_logging(level="CRITICAL", fmt="console")
    env_file: dict[str, str] | None = None
    if args.env_file:
        from wxhook.tools.envfile import read_env_file

        try:
            env_file = read_env_file(args.env_file)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"wxhook: cannot read --env-file {args.env_file}: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 2
    return asyncio.run(run_check(env_file=env_file, account=args.account))


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: its --help shows every option's default."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests)."""
    from wxhook.tools import token_cli
    from wxhook.tools.rules_cli import add_commands

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="wxhook", description=__doc__, formatter_class=fmt,
        epilog="Settings come from the environment and from .env in the directory wxhook "
               "runs in (see .env.example). That directory is also on the import path, so "
               "WXHOOK_HANDLERS=my_account.handlers:router finds ./my_account/handlers.py.")
    # Every subcommand's --help shows the defaults (those added elsewhere too).
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("serve", help="the production server (settings from env and .env)",
                       description="The production server; settings from the environment "
                                   "and .env.")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface, as in a container)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes; more than 1 needs REDIS_URL (shared token, dedup)")
    s.set_defaults(func=cmd_serve)
    d = sub.add_parser("dev", help="the server plus the built-in sandbox; no credentials",
                       description="The server plus the built-in sandbox WeChat API on the "
                                   "next port; no credentials needed. Profiles go to "
                                   f"{SANDBOX_PROFILE_DB} unless WXHOOK_PROFILE_DB is set.",
                       )
    d.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    d.add_argument("--port", type=int, default=8000, help="the server's port")
    d.add_argument("--sandbox-port", type=int, default=0,
                   help="the sandbox API's port (0: the server's port + 1)")
    d.set_defaults(func=cmd_dev)
    b = sub.add_parser("sandbox", help="the stand-in WeChat API alone",
                       description="The stand-in WeChat API alone, for the account in the "
                                   "environment or .env (the sandbox's own when none is "
                                   "set). Point WECHAT_API_BASE and WECHAT_OAUTH_BASE at it.",
                       )
    b.add_argument("--host", default="127.0.0.1", help="address to listen on")
    b.add_argument("--port", type=int, default=8001, help="port to listen on")
    b.add_argument("--appid", default="", help="the appid it accepts (default: WECHAT_APP_ID)")
    b.add_argument("--secret", default="",
                   help="the secret it accepts (default: WECHAT_APP_SECRET)")
    b.add_argument("--latency", type=float, default=0.0,
                   help="seconds each API answer is delayed")
    b.add_argument("--empty-nicknames", action="store_true",
                   help="answer user/info like WeChat since 2021-12-27 (no nickname)")
    b.set_defaults(func=cmd_sandbox)
    m = sub.add_parser("simulate", help="send a signed push as WeChat would; print the reply",
                       description="Sign (and with --aes encrypt) a push exactly as WeChat "
                                   "does, with WECHAT_TOKEN and WECHAT_ENCODING_AES_KEY from "
                                   "the environment or .env (the sandbox's when none is set), "
                                   "send it and print the decoded reply.",
                       )
    m.add_argument("kind", help="subscribe, unsubscribe, SCAN, CLICK, ... or text, image, ...")
    m.add_argument("--url", default=SIMULATE_URL, help="the push URL (with --account: "
                   "/wechat/NAME)")
    m.add_argument("--account", default="", metavar="NAME",
                   help="sign as this account of WXHOOK_ACCOUNTS")
    m.add_argument("--openid", default="oSandboxDemoFollower00000001",
                   help="the sender (FromUserName)")
    m.add_argument("--text", default="hello", help="Content of a text message")
    m.add_argument("--event-key", default="", help="EventKey of an event (CLICK, SCAN, ...)")
    m.add_argument("--aes", action="store_true", help="encrypt as in safe mode")
    m.add_argument("--repeat", type=int, default=1, help="send the same push N times (retries)")
    m.add_argument("--insecure", action="store_true",
                   help="do not verify the server's TLS certificate (a self-signed https URL)")
    m.set_defaults(func=cmd_simulate)
    c = sub.add_parser("check", help="validate settings and reach the WeChat API",
                       description="Validate the settings, fetch an access token, call "
                                   "getcallbackip and ping Redis; say what to fix. Exit 0 "
                                   "only when ready to serve. With WXHOOK_ACCOUNTS: every "
                                   "account's rules, handlers and token, one line each.")
    c.add_argument("--env-file", metavar="FILE", default=None,
                   help="read settings from FILE as systemd's EnvironmentFile= does (quotes, "
                        "spaces in values, # comments), instead of .env; the environment "
                        "still applies where FILE does not set a name")
    c.add_argument("--account", default="", metavar="NAME",
                   help="check only this account of WXHOOK_ACCOUNTS, in full (its token, its "
                        "callback IPs)")
    c.set_defaults(func=cmd_check)
    add_commands(sub)
    token_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    # `python -m` would put the working directory on the import path; the `wxhook` script
    # does not, so an owner's handler package beside where wxhook runs would not import.
    # Appended, not prepended: a file there never shadows an installed module.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    if (sys.argv[1:] if argv is None else argv)[:1] in (["serve"], ["dev"]):
        # First thing, before the imports that build the app: SIGHUP's default would end
        # the server (`systemctl reload` right after a start). Other commands keep it.
        from wxhook.server.hangup import install

        install()
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except BrokenPipeError:  # `wxhook simulate ... | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


