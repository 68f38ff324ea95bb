"""`wxhook check`: validate settings, reach the WeChat API, say plainly what to fix."""

from __future__ import annotations

import sys

from .config import Settings, SettingsError, load_settings
from .errors import CONFIG_HINTS, WeChatAPIError
from .observability import Metrics
from .store.memory import MemoryStore
from .tokens import TokenManager
from .wechat_api import WeChatAPI, WeChatHTTP, new_http_client


def _line(ok: bool, what: str, detail: str = "") -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail else ""))


async def run_check(settings: Settings | None = None) -> int:
    """Print a report; return 0 when everything needed to serve works."""
    print("wxhook check")
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            _line(False, "settings", str(exc))
            return 2
    _line(True, "settings", f"appid {settings.app_id}, API {settings.api_base}, "
          f"{'safe/compatible mode' if settings.aes_keys else 'plaintext mode'}"
          f"{', ' + str(len(settings.aes_keys)) + ' AES keys' if len(settings.aes_keys) > 1 else ''}")
    failed = False
    async with new_http_client(timeout=settings.http_timeout) as http:
        metrics = Metrics()
        tokens = TokenManager(MemoryStore(), WeChatHTTP(http, settings, metrics=metrics).fetch_token,
                              namespace="check:", metrics=metrics)
        api = WeChatAPI(http, settings, metrics=metrics, tokens=tokens)
        try:
            await tokens.get()
            _line(True, "access token", f"obtained through {settings.token_endpoint} endpoint")
        except WeChatAPIError as exc:
            failed = True
            hint = CONFIG_HINTS.get(exc.errcode or 0, "")
            _line(False, "access token", f"errcode {exc.errcode}: {exc.errmsg}")
            if hint:
                print(f"         fix: {hint}")
            if exc.errcode == 40164:
                ip = exc.errmsg.split("invalid ip ")[-1].split(" ")[0] if "invalid ip" in \
                    exc.errmsg else "(see errmsg)"
                print(f"         this server's outbound IP as WeChat sees it: {ip}")
        if not failed:
            try:
                ips = await api.callback_ips()
                _line(True, "callback IPs", f"{len(ips)} addresses WeChat pushes from")
            except WeChatAPIError as exc:
                failed = True
                _line(False, "callback IPs", f"errcode {exc.errcode}: {exc.errmsg}")
    if settings.redis_url is not None:
        from .store.redis import RedisStore

        store = RedisStore(settings.redis_url.get_secret_value(), metrics=Metrics())
        try:
            await store.ping()
            _line(True, "redis", "reachable")
        except Exception as exc:  # noqa: BLE001 - report any failure, never crash the check
            failed = True
            _line(False, "redis", type(exc).__name__)
        finally:
            await store.aclose()
    print("result: " + ("FAILED" if failed else "ready to serve"))
    sys.stdout.flush()
    return 1 if failed else 0
