"""The rules in force, reloaded on SIGHUP and when the file changes; a bad file keeps the old.

With several workers (`wxhook serve --workers N`) each keeps a copy of the last rules it
loaded, the "last good" file: a worker started again while the file on disk is broken
(the old one died) starts on that copy, as the other workers run, instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from wxhook.rules import Rules, RulesError, parse_rules
from wxhook.rules_router import RuleBook
from wxhook.server import hangup
from wxhook.server.logs import get_logger

POLL_INTERVAL = 1.0  # seconds between looks at the file's mtime (a stat: next to free)
LAST_GOOD_ENV = "WXHOOK_RULES_LAST_GOOD"  # set by `serve --workers N` for its workers


class RulesSource:
    """Loads the file at start-up (RulesError: refuse to start), then on demand."""

    def __init__(self, path: str, *, on_result: Callable[[str], None] | None = None,
                 last_good: str | None = None) -> None:
        self.path = path
        self.on_result = on_result or (lambda result: None)
        self.last_good = last_good
        self.log = get_logger("wxhook.rules")
        self._stamp = file_stamp(path)
        self.last_error: str | None = None
        self.loaded_by = "start"
        try:
            self.book = self._load()
        except RulesError as exc:
            if not last_good or not os.path.exists(last_good):
                raise
            # Started again (not the first start: serve refuses a bad file) while the file
            # is broken; the other workers kept the last good rules, and so does this one.
            self.book = RuleBook(_read(last_good, name=path)[0])
            self._refused(exc, why="start")
            self.loaded_by = "last good copy"

    def current(self) -> RuleBook:
        """The rules for the push at hand (a whole RuleBook: never half of two files)."""
        return self.book

    def reload(self, why: str) -> bool:
        """Load the file again; on any problem keep the rules in force, log and count it."""
        self._stamp = file_stamp(self.path)
        try:
            book = self._load()
        except RulesError as exc:
            self._refused(exc, why=why)
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

    def _load(self) -> RuleBook:
        rules, data = _read(self.path, name=self.path)
        if self.last_good:
            try:
                write_atomically(self.last_good, data)
            except OSError as exc:  # serving matters more than the copy
                self.log.warning("rules_last_good_not_saved", path=self.last_good,
                                 error=exc.strerror or str(exc))
        return RuleBook(rules)

    def _refused(self, exc: RulesError, *, why: str) -> None:
        self.last_error = first_problem(exc.problems)
        self.log.error("rules_reload_failed", why=why, path=self.path,
                       problems=exc.problems, kept=self.book.rules.version)
        self.on_result("failed")

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Reload whenever the file's mtime, size or inode changes (runs until cancelled)."""
        await poll_every(self.poll, interval)

    def poll(self) -> None:
        """Reload if the file's mtime, size or inode changed since it was last read."""
        if file_stamp(self.path) != self._stamp:
            self.reload("file changed")

    def status(self) -> dict[str, Any]:
        """For /readyz: which rules are in force, and why a newer file was refused."""
        rules = self.book.rules
        return {"ok": True, "path": self.path, "version": rules.version, "pid": os.getpid(),
                "keywords": len(rules.keywords), "loaded_by": self.loaded_by,
                "last_error": self.last_error}


def save_last_good(rules_path: str, copy: str) -> None:
    """Seed the last good copy with the rules file, if it is valid (else leave none)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(copy)  # a previous run's: never started from
    # Not writable: no copy, and each worker says so (rules_last_good_not_saved).
    with contextlib.suppress(RulesError, OSError):
        write_atomically(copy, _read(rules_path, name=rules_path)[1])


def _read(path: str, *, name: str) -> tuple[Rules, bytes]:
    """The checked rules in `path` and the bytes they came from; RulesError if invalid."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RulesError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    rules, problems = parse_rules(data, name=name)
    if problems or rules is None:
        raise RulesError(problems)
    return rules, data


def first_problem(problems: list[str]) -> str:
    """A refused file's problems in one line: the first, and how many more."""
    more = len(problems) - 1
    return problems[0] if not more else f"{problems[0]} (and {more} more)"


async def poll_every(poll: Callable[[], None], interval: float) -> None:
    """Call `poll` every `interval` seconds, until cancelled: the watchers' loop."""
    while True:
        await asyncio.sleep(interval)
        poll()


def file_stamp(path: str) -> tuple[int, int, int] | None:
    """What the watchers compare: mtime, size and inode (None: unreadable)."""
    try:
        st = os.stat(path)  # through a symlink: a Kubernetes ConfigMap swaps its target
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def write_atomically(path: str, data: bytes) -> None:
    """Write a last good copy: several workers write it, and a rename means a starting
    one never reads half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def reloading(on_sighup: Callable[[], None],
                    *watches: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """While the app runs: `on_sighup` on SIGHUP, and the `watches` (file watchers) running."""
    loop = asyncio.get_running_loop()
    hangup.listen(loop, on_sighup)
    watchers = [loop.create_task(watch) for watch in watches]
    try:
        yield
    finally:
        hangup.unlisten(on_sighup)  # the same object listen() got: it is known by identity
        for watcher in watchers:
            watcher.cancel()


@contextlib.asynccontextmanager
async def watching(*given: RulesSource | None) -> AsyncIterator[None]:
    """While the app runs: reload each file on SIGHUP and when it changes."""
    log = get_logger("wxhook.rules")
    sources = [s for s in given if s is not None]

    def on_sighup() -> None:
        for source in sources:
            source.reload("SIGHUP")
        # hangup keeps SIGHUP from ending the process; with nothing to reload, say so.
        if not sources:
            log.info("sighup_ignored", pid=os.getpid(),
                     why="no rules file (WXHOOK_RULES) to reload")

    async with reloading(on_sighup, *(source.watch() for source in sources)):
        yield
