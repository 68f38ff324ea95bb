"""`wxhook check`: validate settings, reach the WeChat API, say plainly what to fix.

Each failure says what was tried (the URL, secrets masked), what the answer means and what
to do. The caller silences logging first, so only these lines reach the terminal.
"""

from __future__ import annotations

import sys
from typing import Any

from wxhook.errors import CONFIG_HINTS, SettingsError, WeChatAPIError
from wxhook.server.config import Settings, load_settings, mask_url
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.tokens import api_with_tokens
from wxhook.server.wechat_api import new_http_client

WECHAT_API_BASE = "https://api.weixin.qq.com"
_TRANSPORT_MEANS = {
    "ConnectError": "nothing answered there: a wrong host or port, DNS, a firewall, or no "
                    "outbound network from this machine",
    "ConnectTimeout": "the connection was not accepted in time: a firewall dropping packets, "
                      "or no route to that host",
    "timed out": "connected, but no answer in WXHOOK_HTTP_TIMEOUT",
}


def _line(ok: bool | None, what: str, detail: str = "") -> None:
    mark = "ok" if ok else "FAIL" if ok is False else "note"
    print(f"  [{mark}] {what}" + (f": {detail}" if detail else ""))


def _more(label: str, text: str) -> None:
    print(f"         {label + ':':7} {text}")


def _tried(settings: Settings, api: str) -> str:
    base = settings.api_base
    if api == "stable_token":
        return (f"POST {base}/cgi-bin/stable_token (appid {settings.app_id}, "
                "secret *** in the body)")
    if api == "token":
        return (f"GET {base}/cgi-bin/token?grant_type=client_credential&appid={settings.app_id}"
                "&secret=***")
    return f"GET {base}/cgi-bin/getcallbackip?access_token=***"


def _api_failure(settings: Settings, what: str, exc: WeChatAPIError) -> None:
    stand_in = settings.api_base != WECHAT_API_BASE
    if exc.errcode is None:
        _line(False, what, exc.errmsg)
        _more("tried", _tried(settings, exc.api))
        means = _TRANSPORT_MEANS.get(exc.errmsg, "the API did not give a usable answer")
        if exc.errmsg.startswith("HTTP "):
            means = f"the server answered {exc.errmsg}, not the WeChat API's JSON"
        _more("means", means)
        _more("fix", "start `wxhook sandbox` there, or correct WECHAT_API_BASE" if stand_in
              else "let this machine reach api.weixin.qq.com on 443 (proxy, firewall, DNS); "
                   "then run check again")
        return
    _line(False, what, f"errcode {exc.errcode}: {exc.errmsg}")
    _more("tried", _tried(settings, exc.api))
    hint = CONFIG_HINTS.get(exc.errcode, "")
    if stand_in and exc.errcode in (40013, 40125):
        _more("means", "the stand-in knows one appid and secret, those it was started with")
        _more("fix", "start `wxhook sandbox` from this directory (it reads the same .env "
                     "and environment), or pass it --appid and --secret")
        return
    if hint:
        _more("fix", hint)
    if exc.errcode == 40164:
        ip = exc.errmsg.split("invalid ip ")[-1].split(" ")[0] if "invalid ip" in \
            exc.errmsg else "(see errmsg)"
        _more("note", f"this server's outbound IP as WeChat sees it: {ip}")


def _redis_failure(settings: Settings, exc: BaseException) -> None:
    cause = exc.__cause__ or exc
    kind = type(cause).__name__
    url = mask_url(settings.redis_url.get_secret_value()) if settings.redis_url else ""
    _line(False, "redis", kind)
    _more("tried", f"PING {url}")
    if kind == "AuthenticationError" or "NOAUTH" in str(cause) or "WRONGPASS" in str(cause):
        _more("means", "Redis refused the password (or wants one)")
        _more("fix", "put the right password in REDIS_URL: redis://:PASSWORD@host:6379/0")
    elif "Timeout" in kind:
        _more("means", "no answer in time: a firewall, or the wrong host")
        _more("fix", "check the host and port in REDIS_URL and that this machine may reach it")
    else:
        _more("means", "nothing answered there: Redis is not running, or the host or port "
                       "is wrong")
        _more("fix", "start Redis (or correct REDIS_URL); leave REDIS_URL unset to keep all "
                     "state in this one process")


async def run_check(settings: Settings | None = None, *,
                    env_file: dict[str, str] | None = None, account: str = "") -> int:
    """Print a report; return 0 when everything needed to serve works.

    With `env_file` (systemd's EnvironmentFile= read by wxhook.tools.envfile) those values are
    the settings, over the environment, and .env is not read. With `account`, the checks are
    those of that account of the accounts file (WXHOOK_ACCOUNTS).
    """
    print("wxhook check")
    if settings is None:
        try:
            overrides: dict[str, Any] = {} if env_file is None else {"_env_file": None,
                                                                     **env_file}
            settings = load_settings(**overrides)
        except SettingsError as exc:
            _line(False, "settings", str(exc))
            return 2
    if settings.accounts and not account:
        from wxhook.tools.check_accounts import check_accounts

        code, lines = await check_accounts(settings)
        print("\n".join(lines))
        redis_ok = code == 2 or await _redis_ok(settings)  # a refused file: nothing to serve
        code = code or (0 if redis_ok else 1)
        print("result: " + ("FAILED" if code else "ready to serve"))
        sys.stdout.flush()
        return code
    if account:
        from wxhook.server.account_hub import settings_of

        try:
            settings = settings_of(settings, account)
        except SettingsError as exc:
            _line(False, "accounts", str(exc))
            return 2
        print(f"  account {account}")
    keys = f", {len(settings.aes_keys)} AES keys" if len(settings.aes_keys) > 1 else ""
    _line(True, "settings", f"appid {settings.app_id}, API {settings.api_base}, "
          f"{settings.mode} mode{keys}")
    if settings.api_base != WECHAT_API_BASE:
        _line(None, "stand-in API", f"WECHAT_API_BASE is {settings.api_base}, not WeChat's "
              f"{WECHAT_API_BASE}")
        _more("means", "a pass here proves the settings reach that stand-in (`wxhook "
                       "sandbox`, a proxy), not that the real account accepts them")
        _more("next", "before production, unset WECHAT_API_BASE and run check again")
    failed = False
    async with new_http_client(timeout=settings.http_timeout) as http:
        metrics = Metrics()
        api, tokens = api_with_tokens(http, settings, store=MemoryStore(), namespace="check:",
                                      metrics=metrics)
        try:
            await tokens.get()
            _line(True, "access token", f"obtained through {settings.token_endpoint} endpoint")
        except WeChatAPIError as exc:
            failed = True
            _api_failure(settings, "access token", exc)
        if not failed:
            try:
                ips = await api.callback_ips()
                _line(True, "callback IPs", f"{len(ips)} addresses WeChat pushes from")
            except WeChatAPIError as exc:
                failed = True
                _api_failure(settings, "callback IPs", exc)
    if not await _redis_ok(settings):
        failed = True
    print("result: " + ("FAILED" if failed else "ready to serve"))
    sys.stdout.flush()
    return 1 if failed else 0


async def _redis_ok(settings: Settings) -> bool:
    """Ping REDIS_URL, if set, and report it; False when it does not answer."""
    if settings.redis_url is None:
        return True
    from wxhook.server.store.redis import RedisStore

    store = RedisStore(settings.redis_url.get_secret_value(), metrics=Metrics())
    try:
        await store.ping()
        _line(True, "redis", f"reachable at {store.where}")
        return True
    except Exception as exc:  # noqa: BLE001 - report any failure, never crash the check
        _redis_failure(settings, exc)
        return False
    finally:
        await store.aclose()
