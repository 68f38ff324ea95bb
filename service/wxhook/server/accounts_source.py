"""The accounts file in force, reloaded like the rules file: on SIGHUP and when it changes.

A reload adds, removes and changes accounts without a restart (AccountHub.replace): an
added account is served from the next push, a removed one answers 404 (its pieces closed
once the pushes inside them are answered), a changed one is built again on its next push,
and every other account keeps its pieces, token and work. The file, and each rules file
and handlers module it names, is checked as at start-up: any problem keeps the set in
force, says why in one line and counts wxhook_accounts_reloads_total{result="failed"}.

`${VAR}` is read again at every load: from this process's environment, which is the one
wxhook started with (nothing outside a process can change it), then from `.env` in the
working directory as it is at that moment.

With several workers each keeps a copy of the last good file (as of the rules file): a
worker started again while the file on disk is broken starts on that copy, as the other
workers run, instead of failing.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from pathlib import Path
from typing import Any

from wxhook.errors import SettingsError
from wxhook.server.account_hub import AccountHub, load_sources
from wxhook.server.accounts import Account, AccountsError, parse_accounts, read_accounts
from wxhook.server.config import Settings
from wxhook.server.logs import get_logger
from wxhook.server.metrics import Metrics
from wxhook.server.rules_source import (
    POLL_INTERVAL,
    RulesSource,
    file_stamp,
    first_problem,
    poll_every,
    reloading,
    write_atomically,
)

LAST_GOOD_ENV = "WXHOOK_ACCOUNTS_LAST_GOOD"  # set by `serve --workers N` for its workers
_NAMES_SHOWN = 20  # names listed in a reload's line; a file of thousands is counted


class AccountsSource:
    """Loads the file at start-up (SettingsError: refuse to start), then on demand."""

    def __init__(self, base: Settings, *, metrics: Metrics, last_good: str | None = None) -> None:
        self.base = base
        self.path = base.accounts
        self.metrics = metrics
        self.last_good = last_good
        self.log = get_logger("wxhook.accounts")
        self.hub: AccountHub | None = None  # set once built from `accounts` and `sources`
        self._stamp = file_stamp(self.path)
        self.last_error: str | None = None
        self.loaded_by = "start"
        try:
            self._loaded, self.sources, self.version = self._load(read_accounts(self.path))
        except SettingsError as exc:
            if not last_good or not os.path.exists(last_good):
                raise
            # Started again (not the first start: serve refuses a bad set) while the file,
            # or a rules file or handlers module it names, is broken: the other workers
            # kept the last good set, and so does this one.
            self._loaded, self.sources, self.version = self._load(
                Path(last_good).read_bytes(), save=False)
            self._refused(exc, why="start")
            self.loaded_by = "last good copy"

    @property
    def accounts(self) -> dict[str, Account]:
        """The accounts in force: the hub's once it is built (a reload replaces them
        there), before that those loaded at start-up (`sources` is start-up's only: the
        hub keeps the rules sources in force)."""
        return self.hub.accounts if self.hub is not None else self._loaded

    def _load(self, data: bytes, *, known: dict[str, RulesSource] | None = None,
              save: bool = True) -> tuple[dict[str, Account], dict[str, RulesSource], str]:
        accounts = parse_accounts(data, self.path)
        rules_dir = os.path.dirname(self.last_good) if self.last_good else None
        sources = load_sources(self.base, accounts, self.metrics, known=known,
                               last_good_dir=rules_dir)
        if self.last_good and save:
            try:
                write_atomically(self.last_good, data)
            except OSError as exc:  # serving matters more than the copy
                self.log.warning("accounts_last_good_not_saved", path=self.last_good,
                                 error=exc.strerror or str(exc))
        return accounts, sources, hashlib.sha256(data).hexdigest()[:12]

    def reload(self, why: str) -> bool:
        """Load the file again and serve it; on any problem keep the set in force."""
        assert self.hub is not None, "reload() before the hub was built"
        self._stamp = file_stamp(self.path)
        try:
            accounts, sources, version = self._load(read_accounts(self.path),
                                                    known=self.hub.rules)
        except SettingsError as exc:
            self._refused(exc, why=why)
            return False
        except Exception as exc:  # noqa: BLE001 - a bad file must never end the watcher
            self._refused(SettingsError(f"{self.path}: cannot load: {type(exc).__name__}"),
                          why=why)
            return False
        added, removed, changed = self.hub.replace(accounts, sources)
        previous, self.version = self.version, version
        self.last_error = None
        self.loaded_by = why
        self.log.info("accounts_reloaded", why=why, path=self.path, version=version,
                      previous=previous, accounts=len(accounts), added=_names(added),
                      removed=_names(removed), changed=_names(changed), pid=os.getpid())
        self.metrics.accounts_reloads.labels("ok").inc()
        return True

    def _refused(self, exc: SettingsError, *, why: str) -> None:
        # Each problem names a file, a line and a key; none quotes a secret.
        problems = exc.problems if isinstance(exc, AccountsError) else [
            line.strip() for line in str(exc).splitlines() if line.strip()]
        self.last_error = first_problem(problems)
        self.log.error("accounts_reload_failed", why=why, path=self.path, problems=problems,
                       kept=self.version, accounts=len(self.accounts), pid=os.getpid())
        self.metrics.accounts_reloads.labels("failed").inc()

    def sighup(self) -> None:
        """SIGHUP: every rules file the accounts name, then the accounts file, read again."""
        assert self.hub is not None
        for source in list(self.hub.rules.values()):
            source.reload("SIGHUP")
        self.reload("SIGHUP")

    def poll(self) -> None:
        """Reload whichever of the files changed since it was last read."""
        assert self.hub is not None
        for source in list(self.hub.rules.values()):
            source.poll()
        if file_stamp(self.path) != self._stamp:
            self.reload("file changed")

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """poll() every `interval` seconds (runs until cancelled)."""
        await poll_every(self.poll, interval)

    def status(self) -> dict[str, Any]:
        """For /readyz: which accounts file is in force, and why a newer one was refused."""
        built = len(self.hub.built) if self.hub is not None else 0
        return {"ok": True, "path": self.path, "version": self.version,
                "accounts": len(self.accounts), "built": built, "pid": os.getpid(),
                "loaded_by": self.loaded_by, "last_error": self.last_error}


def watching_accounts(source: AccountsSource) -> contextlib.AbstractAsyncContextManager[None]:
    """While the app runs: reload the accounts file and its rules files on SIGHUP and when
    they change."""
    return reloading(source.sighup, source.watch())


def save_last_good(path: str, copy: str) -> None:
    """Seed the last good copy with the accounts file (checked by serve before this), and
    drop a previous run's copies of it and of its rules files: never started from."""
    folder = os.path.dirname(copy)
    for stale in [copy, *glob.glob(os.path.join(folder, "rules-*.last-good"))]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    # Not writable: no copy, and each worker says so (accounts_last_good_not_saved).
    with contextlib.suppress(SettingsError, OSError):
        write_atomically(copy, read_accounts(path))


def _names(names: list[str]) -> list[str] | int:
    return names if len(names) <= _NAMES_SHOWN else len(names)
