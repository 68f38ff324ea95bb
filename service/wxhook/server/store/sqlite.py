"""Follower profiles in an embedded SQLite file: the default when REDIS_URL is not set.

OAuth-captured profiles are the only place a nickname still comes from (user/info answers ""
since 2021-12-27), and asking a follower to authorise again is expensive, so they must
survive a restart even without Redis. The stdlib sqlite3 module blocks, so the connection
lives on aiosqlite's thread: the event loop never waits on disk. Every statement is a
transaction of its own, so statements of concurrent requests cannot interleave inside one
(WAL and busy_timeout cover other processes).

Rows are keyed by (appid, openid): an openid names a follower of one account only, and one
file may serve several (the sandbox's appid and the production one, say), so a profile
captured for one account is never shown by another.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiosqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_profiles (
    appid      TEXT NOT NULL,
    openid     TEXT NOT NULL,
    data       TEXT NOT NULL,          -- JSON object of string fields
    updated_at REAL NOT NULL,
    PRIMARY KEY (appid, openid)
)
"""
# One statement, so one transaction that takes the write lock before it reads: two processes
# merging the same follower cannot lose each other's fields (a Redis HSET's semantics).
_MERGE = """
INSERT INTO account_profiles (appid, openid, data, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (appid, openid) DO UPDATE
SET data = json_patch(data, excluded.data), updated_at = excluded.updated_at
"""


class SqliteProfileRepo:
    """ProfileRepo on a local SQLite file (WAL mode), one account's rows; the file is 0600.

    The file is opened on first use (building an app touches no disk) and closed by
    aclose(); an open or a statement that fails raises to its caller, and the next call
    tries again. Rows of a file from before the account key belong to the first account
    other than `sandbox_appid` that opens it (production's followers must not lose their
    profiles).
    """

    def __init__(self, path: str | os.PathLike[str], *, appid: str,
                 sandbox_appid: str = "") -> None:
        self.path = Path(path)
        self.appid = appid
        self.sandbox_appid = sandbox_appid
        self._conn: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def get(self, openid: str) -> dict[str, str] | None:
        """The stored profile, or None."""
        return await _read(await self._db(), self.appid, openid)

    async def put(self, openid: str, profile: dict[str, str]) -> None:
        """Merge `profile` into the stored one (same semantics as a Redis HSET)."""
        await _merge(await self._db(), self.appid, openid, profile)

    async def delete(self, openid: str) -> None:
        """Remove a profile (a follower asked to be forgotten)."""
        await (await self._db()).execute(
            "DELETE FROM account_profiles WHERE appid = ? AND openid = ?", (self.appid, openid))

    def view(self, appid: str) -> AccountRows:
        """Another account's rows in the same file, through this repo's one connection and
        thread (many accounts: one thread, not one each); closed with this repo."""
        return AccountRows(self, appid)

    async def aclose(self) -> None:
        """Close the connection and stop its thread."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            async with self._opening:  # concurrent first calls open one connection
                if self._conn is None and not self._closed:
                    conn = await self._open()
                    if self._closed:  # aclose() ran while it opened
                        await conn.close()
                    else:
                        self._conn = conn
                if self._conn is None:
                    raise RuntimeError("SqliteProfileRepo is closed")
        return self._conn

    async def _open(self) -> aiosqlite.Connection:
        await asyncio.to_thread(_create_private, self.path)
        conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives app crashes
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute(_SCHEMA)
            if self.appid != self.sandbox_appid:
                await _adopt_legacy(conn, self.appid)
        except BaseException:
            await conn.close()
            raise
        return conn


class AccountRows:
    """One account's profiles in a SqliteProfileRepo's file (SqliteProfileRepo.view)."""

    def __init__(self, repo: SqliteProfileRepo, appid: str) -> None:
        self.repo = repo
        self.appid = appid

    async def get(self, openid: str) -> dict[str, str] | None:
        """The stored profile, or None."""
        return await _read(await self.repo._db(), self.appid, openid)

    async def put(self, openid: str, profile: dict[str, str]) -> None:
        """Merge `profile` into the stored one."""
        await _merge(await self.repo._db(), self.appid, openid, profile)


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Refresh tokens live here: create the file private before SQLite opens it (SQLite
    # gives the -wal and -shm files the database file's permissions).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


async def _adopt_legacy(conn: aiosqlite.Connection, appid: str) -> None:
    """Move the rows of a file from before the account key (table `profiles`, keyed by
    openid alone) under `appid`, once. Runs before the connection is anyone else's."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        if await conn.execute_fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                       "AND name = 'profiles'"):
            await conn.execute("INSERT OR IGNORE INTO account_profiles "
                               "SELECT ?, openid, data, updated_at FROM profiles", (appid,))
            await conn.execute("DROP TABLE profiles")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


async def _read(conn: aiosqlite.Connection, appid: str, openid: str) -> dict[str, str] | None:
    # One trip to the connection's thread (a cursor kept to fetch from would take three).
    rows = list(await conn.execute_fetchall(
        "SELECT data FROM account_profiles WHERE appid = ? AND openid = ?", (appid, openid)))
    if not rows:
        return None
    data = json.loads(rows[0][0])
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


async def _merge(conn: aiosqlite.Connection, appid: str, openid: str,
                 profile: dict[str, str]) -> None:
    fields = json.dumps({str(k): str(v) for k, v in profile.items()}, ensure_ascii=False)
    await conn.execute(_MERGE, (appid, openid, fields, time.time()))
