"""wxhook rules check | import, wxhook menu push | show | delete."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from wxhook.errors import SettingsError, WeChatAPIError
from wxhook.menu import MENU_ERRORS
from wxhook.rules import RulesError, load_rules
from wxhook.server.config import SANDBOX_APP_ID, Settings, load_settings
from wxhook.server.logs import configure_logging
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.tokens import api_with_tokens
from wxhook.server.wechat_api import WeChatAPI, new_http_client

T = TypeVar("T")
WECHAT_API = "https://api.weixin.qq.com"
DEV_SANDBOX = "http://127.0.0.1:8001"  # `wxhook dev`'s sandbox on its default port

# What the errcodes these commands meet most often mean, and what to do.
_MEANING = {
    **MENU_ERRORS,
    40001: "the access token is invalid (another process may have fetched a new one)",
    40013: "invalid appid: copy WECHAT_APP_ID from the console",
    40125: "invalid appsecret: copy WECHAT_APP_SECRET from the console (or reset it)",
    40164: "this machine's IP is not in the console's IP whitelist",
    48001: "the account has no permission for this API (unverified accounts have no menu API)",
}


def add_commands(sub: Any) -> None:
    """Register `rules` and `menu` on the CLI's subparsers."""
    r = sub.add_parser("rules", help="the rules file: check it, or import the console's",
                       description="Replies without code: check a rules file (WXHOOK_RULES), "
                                   "or write one from the console's auto-replies and menu.")
    rs = r.add_subparsers(dest="rules_command", required=True, help="check | import")
    c = rs.add_parser("check", help="exit 0 when FILE is valid; else one line per problem")
    c.add_argument("file", help="the rules file (YAML)")
    c.set_defaults(func=cmd_rules_check)
    i = rs.add_parser("import", help="write a rules file reproducing the console's auto-replies "
                      "and menu (get_current_autoreply_info, get_current_selfmenu_info)")
    i.add_argument("--output", "-o", default="", help="file to write (default: standard output)")
    _account_option(i, "read this account's console (an account of WXHOOK_ACCOUNTS)")
    i.set_defaults(func=cmd_rules_import)
    m = sub.add_parser("menu", help="the custom menu: push it from the rules file, show, delete",
                       description="The account's custom menu: push the rules file's `menu` "
                                   "(menu/create), show the one in force, or delete it.")
    ms = m.add_subparsers(dest="menu_command", required=True, help="push | show | delete")
    p = ms.add_parser("push", help="check the rules file's `menu`, then menu/create")
    p.add_argument("file", nargs="?", default="",
                   help="the rules file (default: the account's rules, else WXHOOK_RULES, "
                        "else rules.yaml)")
    _account_option(p, "push to this account (an account of WXHOOK_ACCOUNTS)")
    p.set_defaults(func=cmd_menu_push)
    show = ms.add_parser("show", help="the menu in force (menu/get)")
    _account_option(show, "this account's menu (an account of WXHOOK_ACCOUNTS)")
    show.set_defaults(func=cmd_menu_show)
    delete = ms.add_parser("delete", help="remove the menu (menu/delete)")
    _account_option(delete, "this account's menu (an account of WXHOOK_ACCOUNTS)")
    delete.set_defaults(func=cmd_menu_delete)


def _account_option(parser: Any, help_text: str) -> None:
    parser.add_argument("--account", default="", metavar="NAME", help=help_text)


def rules_or_exit(settings: Settings) -> None:
    """Refuse to start with a bad WXHOOK_RULES file: print its problems and exit 2."""
    if settings.rules:
        try:
            load_rules(settings.rules)
        except RulesError as exc:
            print(f"wxhook: WXHOOK_RULES={settings.rules} is not valid:\n  "
                  + "\n  ".join(exc.problems), file=sys.stderr)
            sys.exit(2)


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Exit 0 when the file is valid (after any warnings); otherwise one line per problem,
    exit 1."""
    try:
        rules = load_rules(args.file)
    except RulesError as exc:
        for line in exc.problems:
            print(line)
        return 1
    for line in rules.warnings:  # valid, but not what the owner may expect
        print(line)
    print(f"{args.file}: ok (version {rules.version}: {len(rules.keywords)} keyword rules, "
          f"{len(rules.clicks)} clicks, subscribe {'yes' if rules.subscribe else 'no'}, "
          f"default {'yes' if rules.default else 'no'}, menu {'yes' if rules.menu else 'no'})")
    return 0


def cmd_rules_import(args: argparse.Namespace) -> int:
    """Write the console's configuration as a rules file; what cannot be kept goes to stderr."""
    from wxhook.rules import parse_rules
    from wxhook.tools.rules_import import console_to_rules

    async def fetch(api: WeChatAPI) -> tuple[dict[str, Any], dict[str, Any]]:
        auto = await api.call("GET", "/cgi-bin/get_current_autoreply_info", api="autoreply")
        menu = await api.call("GET", "/cgi-bin/get_current_selfmenu_info", api="selfmenu")
        return auto, menu

    got = _with_api(fetch, "reading the console's configuration", _settings(args.account))
    if got is None:
        return 1
    text, notes = console_to_rules(*got)
    for note in notes:
        print(f"wxhook rules import: {note}", file=sys.stderr)
    _, problems = parse_rules(text.encode(), name=args.output or "<import>")
    for line in problems:  # e.g. a console menu name WeChat's API would refuse
        print(f"wxhook rules import: {line}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}; next: wxhook rules check {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0 if not problems else 1


def cmd_menu_push(args: argparse.Namespace) -> int:
    """Check the rules file, then push its menu (menu/create)."""
    settings = _settings(args.account)
    path = args.file or settings.rules or "rules.yaml"
    try:
        rules = load_rules(path)
    except RulesError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    if rules.menu is None:
        print(f"{path}: has no `menu` section to push", file=sys.stderr)
        return 1
    menu = json.loads(json.dumps(rules.menu))

    async def push(api: WeChatAPI) -> dict[str, Any]:
        return await api.call("POST", "/cgi-bin/menu/create", api="menu_create", json=menu)

    if _with_api(push, "menu/create", settings) is None:
        return 1
    to = f" to account {args.account} (appid {settings.app_id})" if args.account else ""
    print(f"menu pushed from {path}{to} (version {rules.version})")
    return 0


def cmd_menu_show(args: argparse.Namespace) -> int:
    """Print the menu in force as JSON."""
    async def show(api: WeChatAPI) -> dict[str, Any]:
        return await api.call("GET", "/cgi-bin/menu/get", api="menu_get")

    got = _with_api(show, "menu/get", _settings(args.account))
    if got is None:
        return 1
    print(json.dumps(got, ensure_ascii=False, indent=2))
    return 0


def cmd_menu_delete(args: argparse.Namespace) -> int:
    """Remove the custom menu."""
    async def delete(api: WeChatAPI) -> dict[str, Any]:
        return await api.call("GET", "/cgi-bin/menu/delete", api="menu_delete")

    if _with_api(delete, "menu/delete", _settings(args.account)) is None:
        return 1
    print("menu deleted")
    return 0


def _settings(account: str = "") -> Settings:
    """The settings these commands act with: those of `account` of WXHOOK_ACCOUNTS (its
    appid, secret and rules), else WECHAT_*'s."""
    try:
        # As `simulate`: with no WECHAT_* at all, the built-in sandbox account.
        settings = load_settings(WXHOOK_SANDBOX=True)
        if account:
            from wxhook.server.account_hub import settings_of

            return settings_of(settings, account)
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.app_id == SANDBOX_APP_ID and settings.api_base == WECHAT_API:
        # The sandbox account exists only in the sandbox: the one `wxhook dev` runs.
        print(f"wxhook: no account set: using the sandbox of `wxhook dev` at {DEV_SANDBOX}",
              file=sys.stderr)
        settings = settings.model_copy(update={"api_base": DEV_SANDBOX})
    return settings


def _with_api(action: Callable[[WeChatAPI], Awaitable[T]], what: str,
              settings: Settings) -> T | None:
    # These commands print their own results and failures; the server's log lines
    # (token fetched, ...) would only get in the way of a `menu show | jq`.
    configure_logging(level="CRITICAL", fmt="console")

    async def run() -> T:
        async with new_http_client(timeout=settings.http_timeout) as http:
            api, _ = api_with_tokens(http, settings, store=MemoryStore(),
                                     namespace=f"wxhook:{settings.app_id}:", metrics=Metrics())
            return await action(api)

    try:
        return asyncio.run(run())
    except WeChatAPIError as exc:
        meaning = _MEANING.get(exc.errcode or 0, "")
        print(f"wxhook: {what} failed at {settings.api_base}: errcode {exc.errcode}"
              + (f" ({meaning})" if meaning else "") + f": {exc.errmsg}", file=sys.stderr)
        return None
