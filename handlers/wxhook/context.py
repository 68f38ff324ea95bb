"""What a handler gets besides the message: time left, profiles, the API, a logger, the
regex match, the follower's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from wxhook.state import Loaded, States

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from wxhook.replies import Reply
    from wxhook.rules_regex import Match
    from wxhook.services import AccountSettings, ProfileSource, WeChatClient

T = TypeVar("T")


@dataclass(slots=True)
class Context:
    """What a handler may use: the follower's profile, the API, the time left, a logger."""

    deadline: float                      # time.monotonic() by which the reply must be ready
    profiles: ProfileSource
    api: WeChatClient
    settings: AccountSettings
    log: FilteringBoundLogger
    handler: str = ""                    # who answered: set by the router (or by the handler)
    # Sent by customer-service message, in order, only once the reply has gone out (rendered
    # in time, or delivered late): never replies 2..n without reply 1.
    after_reply: tuple[Reply, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)  # middleware -> handlers
    # The regex of `@router.text(regex=...)` that matched this push (None: no regex did).
    match: Match | None = None
    states: States | None = None         # where follower state lives (None: nowhere)
    openid: str = ""                     # whose state `state()` reads
    account: str = "default"             # the accounts file's name (WXHOOK_ACCOUNTS)
    _state: Loaded | None = field(default=None, repr=False)

    def remaining(self) -> float:
        """Seconds left before the reply is due."""
        return self.deadline - time.monotonic()

    async def within(self, coro: Coroutine[Any, Any, T], default: T, *,
                     margin: float = 0.25) -> T:
        """Await `coro`, or give `default` when it would eat into the reply's margin."""
        budget = self.remaining() - margin
        if budget <= 0:
            coro.close()
            return default
        try:
            return await asyncio.wait_for(coro, budget)
        except TimeoutError:
            return default

    async def nickname(self, openid: str) -> str | None:
        """The follower's nickname if known in time, else None."""
        # Profiles bounds its own waiting by the deadline (no extra task, as within() needs).
        return await self.profiles.nickname(openid, deadline=self.deadline - 0.25)

    async def state(self) -> dict[str, Any]:
        """This follower's state, read on first use; change it in place and it is saved
        once after the handlers (JSON values only, at most 4 KB)."""
        if self._state is None:
            if self.states is None:
                raise RuntimeError("no state store: this Context was not built by wxhook's "
                                   "/wechat route (use wxhook.testing.HandlerClient)")
            self._state = await self.states.load(self.openid)
        return self._state.data

    @property
    def state_read(self) -> bool:
        """True once a handler (or middleware) asked for the state in this push."""
        return self._state is not None

    async def save_state(self, **who: Any) -> str | None:
        """Write the state back if a handler read and changed it (the server calls this once
        per push; `who` goes into its log lines); the outcome, or None when nobody read it."""
        if self._state is None or self.states is None:
            return None
        return await self.states.save(self.openid, self._state, who=who)
