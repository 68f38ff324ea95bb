"""The peer: WeRoBot from PyPI doing the same job as wxhook, as a typical WeRoBot app would.

Served by `gunicorn -w 1 --threads 32 -k gthread bench.peers.werobot_app:app`.
Settings come from the same environment variables wxhook reads.

WeRoBot's own Client hard-codes https://api.weixin.qq.com, so the subscribe handler calls
WECHAT_API_BASE with `requests` (one keep-alive Session per thread) and caches the access
token in-process behind a lock: one fetch, shared by all 32 threads.
"""

import os
import threading
import time

import requests
import werobot

API_BASE = os.environ.get("WECHAT_API_BASE", "https://api.weixin.qq.com").rstrip("/")
APP_ID = os.environ["WECHAT_APP_ID"]
APP_SECRET = os.environ["WECHAT_APP_SECRET"]
AES_KEY = os.environ.get("WECHAT_ENCODING_AES_KEY") or None

robot = werobot.WeRoBot(
    token=os.environ["WECHAT_TOKEN"],
    encoding_aes_key=AES_KEY,
    app_id=APP_ID,
    app_secret=APP_SECRET,
)
robot.config["SESSION_STORAGE"] = False  # wxhook keeps no per-user session either
if AES_KEY:
    robot.crypto  # noqa: B018 - the property builds MessageCrypt: encrypted replies on

_local = threading.local()


def _session() -> requests.Session:
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
    return s


class TokenCache:
    """Thread-safe access token cache: one fetch, refreshed 5 minutes before expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def get(self) -> str:
        if self._token and time.monotonic() < self._expires_at:
            return self._token
        with self._lock:
            if self._token and time.monotonic() < self._expires_at:
                return self._token
            r = _session().get(
                f"{API_BASE}/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET},
                timeout=5,
            )
            data = r.json()
            self._token = data["access_token"]
            self._expires_at = time.monotonic() + int(data.get("expires_in", 7200)) - 300
            return self._token


tokens = TokenCache()


@robot.text
def echo(message):
    return f"You said: {message.content}"


@robot.subscribe
def welcome(message):
    r = _session().get(
        f"{API_BASE}/cgi-bin/user/info",
        params={"access_token": tokens.get(), "openid": message.source, "lang": "zh_CN"},
        timeout=5,
    )
    nickname = r.json().get("nickname") or ""
    return f"Welcome, {nickname}!" if nickname else "Welcome!"


app = robot.wsgi
