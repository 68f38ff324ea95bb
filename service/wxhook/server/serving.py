"""The production server's pieces: the ASGI app each uvicorn worker builds, and its options.

`wxhook serve` (service/tools/cli.py) starts uvicorn with `wxhook.server.serving:app_factory`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from wxhook.errors import SettingsError
from wxhook.server.config import Settings, load_settings


def settings_or_exit(**overrides: Any) -> Settings:
    """Settings from the environment, or their one-line fault on stderr and exit 2."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)


def insecure_base_url(url: str) -> bool:
    """True when `url` is plain http to a host other than this machine's loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return True


def warn_if_insecure(settings: Settings, log: Any) -> None:
    """One warning line when PUBLIC_BASE_URL would send cookies without Secure."""
    if insecure_base_url(settings.public_base_url):
        log.warning("public_base_url_not_https", setting="PUBLIC_BASE_URL",
                    value=settings.public_base_url,
                    why="the OAuth and session cookies go without Secure, readable on the way",
                    fix="set PUBLIC_BASE_URL to the https:// origin the TLS proxy serves")


def app_or_exit(settings: Settings) -> Any:
    """create_app(), or the one-line reason it cannot be built (WXHOOK_HANDLERS) and exit 2.

    uvicorn's own lines (a malformed request, an upgrade) come under the per-reason bound
    from here on, counted in this app's metrics.
    """
    from wxhook.server.app import create_app
    from wxhook.server.loglimit import limit_library_logs

    try:
        app: Any = create_app(settings)
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)
    limit_library_logs(app.state.metrics)
    return _BehindProxy(app, settings.forwarded_allow_ips)


class _BehindProxy(ProxyHeadersMiddleware):
    """uvicorn's X-Forwarded-* handling (WXHOOK_FORWARDED_ALLOW_IPS), with the app's own
    attributes (state, hub) reachable through it.

    The client address matters to the OAuth routes (their per-client limits, the logs);
    behind nginx it is nginx's unless the proxy is trusted. /wechat never reads it and gets
    it all the same: skipping the middleware there was measured not worth its code
    (bench/README.md, "Hand-written structures").
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


def app_factory() -> Any:
    """The ASGI app from the environment (uvicorn --factory, one per worker)."""
    from wxhook.server import hangup
    from wxhook.server.logs import configure_logging

    # Before the app and its rules load (already done by `wxhook serve` and its workers;
    # here for `uvicorn --factory wxhook.server.serving:app_factory`).
    hangup.install()
    settings = settings_or_exit()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    app = app_or_exit(settings)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        return app
    from wxhook.server.multiproc import worker_app

    return worker_app(app, metrics_dir)


def uvicorn_kwargs() -> dict[str, Any]:
    """uvicorn's options for wxhook (serve and dev alike)."""
    # proxy_headers off here: app_or_exit wraps the app in the same middleware with
    # WXHOOK_FORWARDED_ALLOW_IPS (uvicorn's own option reads FORWARDED_ALLOW_IPS).
    # ws "none": no route speaks WebSocket, so no handshake code is reachable by a client.
    return {"loop": "uvloop", "http": "httptools", "ws": "none", "access_log": False,
            "log_config": None, "server_header": False, "timeout_graceful_shutdown": 15,
            "backlog": 4096, "proxy_headers": False}
