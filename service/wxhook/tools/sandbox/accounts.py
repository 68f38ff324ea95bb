"""The sandbox standing in for every account of an accounts file, as the file is now.

WeChat knows every account an owner has; the sandbox knows the ones the file names. It
reads the file again when it changes (looked at before each request), so an account added
to a running server's file has its tokens here too. Accounts taken out stay known: WeChat
does not forget them either.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from wxhook.errors import SettingsError
from wxhook.server.accounts import Account, load_accounts, root_of
from wxhook.tools.sandbox.state import SandboxState


class FollowAccounts:
    """ASGI app: `app` (the sandbox), knowing each account in `path` (re-read on change)."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.state: SandboxState = app.state.sandbox
        self.path = path
        self._stamp: tuple[int, int, int] | None = (-1, -1, -1)  # never read yet
        self.count = 0
        self.count = self.refresh()  # a bad file at start: SettingsError, said by the caller

    def refresh(self) -> int:
        """Read the file if it changed; the number of accounts it names (SettingsError)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return self.count
        accounts = load_accounts(self.path)
        self._stamp = stamp
        for account in accounts.values():
            self.state.add_account(account.app_id, account.app_secret.get_secret_value())
        self.count = len(accounts)
        return self.count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            with contextlib.suppress(SettingsError):  # broken meanwhile: the ones it knows
                self.refresh()
        await self.app(scope, receive, send)


def following_or_exit(sandbox: Any, path: str) -> FollowAccounts:
    """The sandbox standing in for each account of the file at `path` too; a bad file: its
    problems on stderr and exit 2."""
    try:
        return FollowAccounts(sandbox, path)
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        sys.exit(2)


def dev_text(accounts: dict[str, Account], path: str, *, url: str, base: str,
             rules: str) -> str:
    """What `wxhook dev` says with an accounts file: each account's URL and a push to try."""
    tries = []
    for account in list(accounts.values())[:3]:
        aes = " --aes" if account.message_mode == "safe" else ""
        tries.append(f"  .venv/bin/wxhook simulate subscribe --account {account.name}{aes} "
                     f"--url {url}/wechat/{account.name}")
    more = f"\n  ... and {len(accounts) - 3} more accounts" if len(accounts) > 3 else ""
    root = root_of(accounts)
    also = f" ({root} also at {url}/wechat: the file's root)" if root else ""
    return f"""
wxhook dev: the server on {url}, the sandbox WeChat API on {base}
  the {len(accounts)} accounts of {path} (WXHOOK_ACCOUNTS), each at {url}/wechat/NAME{also};
  the sandbox stands in for each of them, and for any added to the file while it runs
  (no real account is touched){rules}

Try next, in another terminal with the same environment (the file's ${{VAR}}s):
""" + "\n".join(tries) + more + f"""
  curl {url}/readyz
  (edit {path}, or kill -HUP this process: the accounts are read again)
"""
