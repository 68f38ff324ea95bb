"""Follower profiles in an embedded SQLite file: the default when REDIS_URL is not set.

OAuth-captured profiles are the only place a nickname still comes from (user/info answers ""
since 2021-12-27), and asking a follower to authorise again is expensive, so they must
survive a restart even without Redis. The stdlib sqlite3 module blocks, so every statement
runs on one dedicated thread that owns the connection: the event loop never waits on disk,
and one thread means no locking inside the process (WAL and busy_timeout cover others).

Rows are keyed by (appid, openid): an openid names a follower of one account only, and one
file may serve several (the sandbox's appid and the production one, say), so a profile
captured for one account is never shown by another.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_profiles (
    appid      TEXT NOT NULL,
    openid     TEXT NOT NULL,
    data       TEXT NOT NULL,          -- JSON object of string fields
    updated_at REAL NOT NULL,
    PRIMARY KEY (appid, openid)
)
"""


class _Holder:
    """The connection, kept outside the repo so the finalizer can close it."""

    conn: sqlite3.Connection | None = None


def _close(holder: _Holder, executor: ThreadPoolExecutor) -> None:
    if holder.conn is not None:
        holder.conn.close()
        holder.conn = None
    executor.shutdown(wait=False)


class SqliteProfileRepo:
    """ProfileRepo on a local SQLite file (WAL mode), one account's rows; the file is 0600.

    Rows of a file from before the account key belong to the first account other than
    `sandbox_appid` that opens it (production's followers must not lose their profiles).
    """

    def __init__(self, path: str | os.PathLike[str], *, appid: str,
                 sandbox_appid: str = "") -> None:
        self.path = Path(path)
        self.appid = appid
        self.sandbox_appid = sandbox_appid
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wxhook-sqlite")
        self._holder = _Holder()
        # A repo dropped without aclose() (tests, scripts) must not leak the connection.
        self._finalizer = weakref.finalize(self, _close, self._holder, self._executor)

    async def get(self, openid: str) -> dict[str, str] | None:
        """The stored profile, or None."""
        return await self._run(lambda conn: _read(conn, self.appid, openid))

    async def put(self, openid: str, profile: dict[str, str]) -> None:
        """Merge `profile` into the stored one (same semantics as a Redis HSET)."""
        fields = {str(k): str(v) for k, v in profile.items()}
        await self._run(lambda conn: _merge(conn, self.appid, openid, fields))

    async def delete(self, openid: str) -> None:
        """Remove a profile (a follower asked to be forgotten)."""
        await self._run(lambda conn: conn.execute(
            "DELETE FROM account_profiles WHERE appid = ? AND openid = ?", (self.appid, openid)))

    def view(self, appid: str) -> AccountRows:
        """Another account's rows in the same file, through this repo's one connection and
        thread (many accounts: one thread, not one each); closed with this repo."""
        return AccountRows(self, appid)

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        if self._finalizer.alive:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._close_conn)
            self._finalizer()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._finalizer.alive:
            raise RuntimeError("SqliteProfileRepo is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: fn(self._connection()))

    def _close_conn(self) -> None:
        if self._holder.conn is not None:
            self._holder.conn.close()
            self._holder.conn = None

    def _connection(self) -> sqlite3.Connection:
        # Opened lazily, on the worker thread, so building an app touches no disk.
        if self._holder.conn is None:
            self._holder.conn = _open(self.path)
            if self.appid != self.sandbox_appid:
                _adopt_legacy(self._holder.conn, self.appid)
        return self._holder.conn


class AccountRows:
    """One account's profiles in a SqliteProfileRepo's file (SqliteProfileRepo.view)."""

    def __init__(self, repo: SqliteProfileRepo, appid: str) -> None:
        self.repo = repo
        self.appid = appid

    async def get(self, openid: str) -> dict[str, str] | None:
        """The stored profile, or None."""
        return await self.repo._run(lambda conn: _read(conn, self.appid, openid))

    async def put(self, openid: str, profile: dict[str, str]) -> None:
        """Merge `profile` into the stored one."""
        fields = {str(k): str(v) for k, v in profile.items()}
        await self.repo._run(lambda conn: _merge(conn, self.appid, openid, fields))


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        # Refresh tokens live here: create the file private before SQLite opens it
        # (SQLite gives the -wal and -shm files the database file's permissions).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    # check_same_thread=False only so the finalizer may close it from another thread;
    # every statement still runs on the one worker thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _adopt_legacy(conn: sqlite3.Connection, appid: str) -> None:
    """Move the rows of a file from before the account key (table `profiles`, keyed by
    openid alone) under `appid`, once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'profiles'").fetchone():
            conn.execute("INSERT OR IGNORE INTO account_profiles "
                         "SELECT ?, openid, data, updated_at FROM profiles", (appid,))
            conn.execute("DROP TABLE profiles")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _read(conn: sqlite3.Connection, appid: str, openid: str) -> dict[str, str] | None:
    row = conn.execute("SELECT data FROM account_profiles WHERE appid = ? AND openid = ?",
                       (appid, openid)).fetchone()
    if row is None:
        return None
    data = json.loads(row[0])
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def _merge(conn: sqlite3.Connection, appid: str, openid: str, fields: dict[str, str]) -> None:
    # IMMEDIATE takes the write lock before reading, so two processes merging the same
    # follower cannot lose each other's fields.
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _read(conn, appid, openid) or {}
        current.update(fields)
        conn.execute(
            "INSERT INTO account_profiles (appid, openid, data, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(appid, openid) DO UPDATE SET "
            "data = excluded.data, updated_at = excluded.updated_at",
            (appid, openid, json.dumps(current, ensure_ascii=False), time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
