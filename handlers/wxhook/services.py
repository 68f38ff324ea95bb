"""What the server hands a handler, as the handler API sees it: protocols the server's
classes satisfy, so this package never imports the server (not even to type-check)."""

from __future__ import annotations

from typing import Any, Protocol


class WeChatClient(Protocol):
    """The WeChat API with the account's global access token added to every call."""

    async def call(self, method: str, path: str, *, api: str,
                   params: dict[str, str] | None = None, json: Any = None,
                   deadline: float | None = None) -> dict[str, Any]:
        """One API call; WeChatAPIError (wxhook.errors) on an errcode."""
        ...

    async def user_info(self, openid: str, *, deadline: float | None = None) -> dict[str, Any]:
        """cgi-bin/user/info for one follower."""
        ...

    async def send_custom(self, payload: dict[str, Any], *,
                          deadline: float | None = None) -> None:
        """message/custom/send: a message outside the passive-reply window."""
        ...


class ProfileSource(Protocol):
    """Follower profiles: OAuth-captured, else user/info, cached."""

    async def nickname(self, openid: str, *, deadline: float | None = None) -> str | None:
        """The follower's nickname if known by `deadline`, else None."""
        ...


class AccountSettings(Protocol):
    """The settings a handler may read."""

    @property
    def app_id(self) -> str:
        """The account's appid."""
        ...

    @property
    def greeting(self) -> str:
        """The greeting template (`{nickname}`)."""
        ...

    @property
    def greeting_anonymous(self) -> str:
        """The greeting when no nickname is known."""
        ...
