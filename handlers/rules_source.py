"""The rules in force, reloaded on SIGHUP and when the file changes; a bad file keeps the old."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from service import hangup
from service.logs import get_logger

from .rules import RulesError, load_rules
from .rules_router import RuleBook

POLL_INTERVAL = 1.0  # seconds between looks at the file's mtime (a stat: next to free)


class RulesSource:
    """Loads the file at start-up (RulesError: refuse to start), then on demand."""

    def __init__(self, path: str, *, on_result: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_result = on_result or (lambda result: None)
        self.log = get_logger("wxhook.rules")
        self.book = RuleBook(load_rules(path))
        self._stamp = self._stat()
        self.last_error: str | None = None
        self.loaded_by = "start"

    def current(self) -> RuleBook:
        """The rules for the push at hand (a whole RuleBook: never half of two files)."""
        return self.book

    def reload(self, why: str) -> bool:
        """Load the file again; on any problem keep the rules in force, log and count it."""
        self._stamp = self._stat()
        try:
            book = RuleBook(load_rules(self.path))
        except RulesError as exc:
            self.last_error = exc.problems[0] if len(exc.problems) == 1 else (
                f"{exc.problems[0]} (and {len(exc.problems) - 1} more)")
            self.log.error("rules_reload_failed", why=why, path=self.path,
                           problems=exc.problems, kept=self.book.rules.version)
            self.on_result("failed")
            return False
        except Exception as exc:  # noqa: BLE001 - a bad file must never end the watcher
            self.last_error = f"{self.path}: cannot load: {type(exc).__name__}"
            self.log.error("rules_reload_failed", why=why, path=self.path,
                           problems=[self.last_error], error=str(exc)[:200],
                           kept=self.book.rules.version)
            self.on_result("failed")
            return False
        old, self.book = self.book.rules.version, book
        self.last_error = None
        self.loaded_by = why
        self.log.info("rules_reloaded", why=why, path=self.path, version=book.rules.version,
                      previous=old, keywords=len(book.keywords))
        self.on_result("ok")
        return True

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Reload whenever the file's mtime, size or inode changes (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            if self._stat() != self._stamp:
                self.reload("file changed")

    def status(self) -> dict[str, Any]:
        """For /readyz: which rules are in force, and why a newer file was refused."""
        rules = self.book.rules
        return {"ok": True, "path": self.path, "version": rules.version, "pid": os.getpid(),
                "keywords": len(rules.keywords), "loaded_by": self.loaded_by,
                "last_error": self.last_error}

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino


@contextlib.asynccontextmanager
async def watching(source: RulesSource | None) -> AsyncIterator[None]:
    """While the app runs: reload on SIGHUP and when the file changes."""
    log = get_logger("wxhook.rules")

    def on_sighup() -> None:
        if source is not None:
            source.reload("SIGHUP")
        else:  # service.hangup keeps SIGHUP from ending the process; say it did nothing
            log.info("sighup_ignored", pid=os.getpid(),
                     why="no rules file (WXHOOK_RULES) to reload")

    loop = asyncio.get_running_loop()
    hangup.listen(loop, on_sighup)
    watcher = loop.create_task(source.watch()) if source is not None else None
    try:
        yield
    finally:
        hangup.unlisten(on_sighup)
        if watcher is not None:
            watcher.cancel()
