"""`wxhook check` with an accounts file: every account, one line each.

Each account's line says whether it can serve: its rules file and handlers load, and its
appid and secret get an access token (from WeChat, or the stand-in at WECHAT_API_BASE). A
failing line names what failed and what to do; secrets are never printed. The accounts are
checked a few at a time, so a file of a thousand takes seconds, not minutes, and no more
than CONCURRENCY token requests are in flight at once.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httpx

from wxhook.defaults import default_router
from wxhook.errors import CONFIG_HINTS, SettingsError, WeChatAPIError
from wxhook.rules import RulesError, load_rules
from wxhook.server.account_hub import account_settings
from wxhook.server.accounts import Account, load_accounts, root_of
from wxhook.server.config import Settings
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.tokens import api_with_tokens
from wxhook.server.wechat_api import new_http_client

CONCURRENCY = 8  # accounts whose token is being fetched at once
WECHAT_API_BASE = "https://api.weixin.qq.com"


def _mark(ok: bool | None) -> str:
    return "ok" if ok else "FAIL" if ok is False else "note"


async def check_accounts(base: Settings) -> tuple[int, list[str]]:
    """(0: every account can serve, 1: some cannot, 2: the file is refused; the report's
    lines): the file's line, then one per account in file order."""
    try:
        accounts = load_accounts(base.accounts)
    except SettingsError as exc:
        return 2, [f"  [FAIL] accounts: {exc}"]
    root = root_of(accounts)
    lines = [f"  [ok] accounts: {len(accounts)} in {base.accounts}"
             + (f", {root} also at /wechat (root)" if root else "")]
    if base.api_base != WECHAT_API_BASE:
        lines.append(f"  [note] stand-in API: WECHAT_API_BASE is {base.api_base}: a pass proves "
                     "the accounts reach that stand-in, not that WeChat accepts them")
    checks = _Checks(base)
    async with new_http_client(timeout=base.http_timeout) as http:
        results = await asyncio.gather(*(checks.one(http, a) for a in accounts.values()))
    failed = [name for name, (ok, _) in zip(accounts, results, strict=True) if not ok]
    lines += [f"  [{_mark(ok)}] {name}: {detail}"
              for name, (ok, detail) in zip(accounts, results, strict=True)]
    if failed:
        shown = ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else "")
        lines.append(f"  {len(failed)} of {len(accounts)} accounts cannot serve ({shown}): "
                     "wxhook check --account NAME says more about one")
    return (1 if failed else 0), lines


class _Checks:
    """What every account's check shares: the token requests in flight, the rules files and
    handlers modules already loaded (accounts may name the same)."""

    def __init__(self, base: Settings) -> None:
        self.base = base
        self.gate = asyncio.Semaphore(CONCURRENCY)
        self.metrics = Metrics()
        self.rules = functools.cache(_rules_problem)        # accounts may share a file
        self.handlers = functools.cache(_handlers_problem)  # or a module

    async def one(self, http: httpx.AsyncClient, account: Account) -> tuple[bool, str]:
        """(ok, the detail of the account's line)."""
        settings = account_settings(self.base, account)
        head = f"appid {settings.app_id}, {settings.mode} mode"
        problems = [p for p in (settings.rules and self.rules(settings.rules),
                                settings.handlers and self.handlers(settings.handlers)) if p]
        token = await self._token(http, settings, account.name)
        if token:
            problems.append(token)
        if problems:
            return False, f"{head}: " + "; ".join(problems)
        extra = f", rules {settings.rules}" if settings.rules else ""
        return True, f"{head}{extra}, access token obtained"

    async def _token(self, http: httpx.AsyncClient, settings: Settings, name: str) -> str | None:
        """None when a token was obtained; else what failed and what to do."""
        _, tokens = api_with_tokens(http, settings, store=MemoryStore(),
                                    namespace=f"check:{name}:",
                                    metrics=self.metrics.for_account(name))
        async with self.gate:
            try:
                await tokens.get()
            except WeChatAPIError as exc:
                return _token_failure(settings, exc)
        return None


def _token_failure(settings: Settings, exc: WeChatAPIError) -> str:
    stand_in = settings.api_base != WECHAT_API_BASE
    if exc.errcode is None:
        where = "the stand-in" if stand_in else "api.weixin.qq.com"
        return f"access token: {exc.errmsg} (no usable answer from {where})"
    out: list[Any] = [f"access token: errcode {exc.errcode}: {exc.errmsg}"]
    if stand_in and exc.errcode in (40013, 40125):
        out.append("fix: start `wxhook sandbox` with the same WXHOOK_ACCOUNTS, so it knows "
                   "this appid and secret")
    elif hint := CONFIG_HINTS.get(exc.errcode):
        # The credentials are the accounts file's, not WECHAT_*'s.
        out.append("fix: " + hint.replace("WECHAT_APP_ID", "its app_id")
                   .replace("WECHAT_APP_SECRET", "its app_secret"))
    return " - ".join(out)


def _rules_problem(path: str) -> str | None:
    """The rules file's first problem; None: it is valid."""
    try:
        load_rules(path)
    except RulesError as exc:
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return f"rules: {exc.problems[0]}{more}"
    return None


def _handlers_problem(spec: str) -> str | None:
    """Why the handlers module cannot load; None: it loads."""
    try:
        default_router(spec)
    except SettingsError as exc:
        return f"handlers: {exc}"
    return None
