"""Test a router as WeChat would drive it: signed pushes through the real /wechat route,
against the in-process sandbox WeChat API, replies decoded into their fields.

    async with HandlerClient(router) as wx:
        reply = await wx.text("hours")
        assert reply["Content"] == "We are open 9-17."
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from service.app import create_app
from service.config import SANDBOX_AES_KEY, SANDBOX_APP_ID, SANDBOX_APP_SECRET, load_settings
from service.crypto import MessageCrypto
from service.profiles import StoreProfileRepo
from service.store.base import Store
from service.store.memory import MemoryStore
from service.tools.sandbox import DEMO_OPENID, SandboxState, create_sandbox
from service.tools.simulate import decode_reply, push_xml, sign_push

from .router import Router

TOKEN = "wxhookTestClient"


class HandlerClient:
    """An app around `router`, wired to an in-process sandbox; `aes=True`: safe mode."""

    def __init__(self, router: Router, *, aes: bool = False, store: Store | None = None,
                 **settings: Any) -> None:
        self.aes = aes
        self._sandbox = create_sandbox(appid=SANDBOX_APP_ID, secret=SANDBOX_APP_SECRET)
        self.sandbox: SandboxState = self._sandbox.state.sandbox
        self.settings = load_settings(_env_file=None, **{
            "WECHAT_APP_ID": SANDBOX_APP_ID, "WECHAT_APP_SECRET": SANDBOX_APP_SECRET,
            "WECHAT_TOKEN": TOKEN, "WECHAT_ENCODING_AES_KEY": SANDBOX_AES_KEY,
            "WECHAT_API_BASE": "http://sandbox", "WECHAT_OAUTH_BASE": "http://sandbox",
            **settings})
        self.crypto = MessageCrypto(TOKEN, self.settings.aes_keys, self.settings.app_id)
        self._upstream = httpx.AsyncClient(transport=httpx.ASGITransport(app=self._sandbox))
        # A shared store (a RedisStore) makes two clients two instances of one deployment;
        # whoever passes it closes it.
        store = MemoryStore() if store is None else store
        app = create_app(self.settings, http=self._upstream, store=store, router=router,
                         profile_repo=StoreProfileRepo(store, namespace="test:"))
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://wxhook")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._client.aclose()
        await self._upstream.aclose()

    async def push(self, kind: str, *, openid: str = DEMO_OPENID, text: str = "hello",
                   event_key: str = "", fields: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
        """Send one push (`kind`: a MsgType such as "image", or an event such as "LOCATION",
        with `fields` such as {"Latitude": "23.1"} or {"ScanCodeInfo/ScanResult": "x"});
        the reply's fields ({} when the answer was "success")."""
        xml = push_xml(kind, openid=openid, text=text, event_key=event_key, fields=fields)
        signed = sign_push(xml, token=TOKEN, openid=openid,
                           crypto=self.crypto if self.aes else None)
        r = await self._client.post("/wechat", params=signed.params, content=signed.body)
        r.raise_for_status()
        return decode_reply(r.content, crypto=self.crypto)

    async def text(self, content: str, *, openid: str = DEMO_OPENID) -> dict[str, str]:
        """A follower sends `content`."""
        return await self.push("text", openid=openid, text=content)

    async def click(self, key: str, *, openid: str = DEMO_OPENID) -> dict[str, str]:
        """A follower taps the menu button with `key`."""
        return await self.push("CLICK", openid=openid, event_key=key)

    async def subscribe(self, *, scene: str | None = None,
                        openid: str = DEMO_OPENID) -> dict[str, str]:
        """A new follower, through the QR code of `scene` if given."""
        key = f"qrscene_{scene}" if scene is not None else ""
        return await self.push("subscribe", openid=openid, event_key=key)

    async def scan(self, scene: str, *, openid: str = DEMO_OPENID) -> dict[str, str]:
        """A follower scans the QR code of `scene`."""
        return await self.push("SCAN", openid=openid, event_key=scene)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Customer-service messages sent so far (late replies, reply_all's others)."""
        return self.sandbox.sent
