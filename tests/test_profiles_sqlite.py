"""SqliteProfileRepo: the default profile store without Redis; it must survive a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from tests.conftest import OPENID
from tests.support import SANDBOX_APP_ID as APPID
from wxhook.server.profiles import StoreProfileRepo
from wxhook.server.store.memory import MemoryStore
from wxhook.server.store.sqlite import SqliteProfileRepo


@pytest.fixture
async def repo(tmp_path: Path):
    r = SqliteProfileRepo(tmp_path / "nested" / "dir" / "profiles.sqlite3", appid=APPID)
    yield r
    await r.aclose()


async def test_round_trip_and_merge(repo: SqliteProfileRepo):
    assert await repo.get(OPENID) is None
    await repo.put(OPENID, {"nickname": "刺猬宝宝 🦔", "headimgurl": "https://x/132"})
    await repo.put(OPENID, {"nickname": "新名字", "scope": "snsapi_userinfo"})
    assert await repo.get(OPENID) == {"nickname": "新名字", "headimgurl": "https://x/132",
                                      "scope": "snsapi_userinfo"}
    await repo.delete(OPENID)
    assert await repo.get(OPENID) is None


async def test_file_is_private_wal_and_in_a_created_dir(repo: SqliteProfileRepo):
    await repo.put(OPENID, {"refresh_token": "secret"})
    assert repo.path.parent.is_dir()
    assert stat.S_IMODE(repo.path.stat().st_mode) == 0o600
    with sqlite3.connect(repo.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (repo.path.parent / (repo.path.name + "-wal")).exists()


async def test_survives_a_restart(tmp_path: Path):
    path = tmp_path / "p.sqlite3"
    first = SqliteProfileRepo(path, appid=APPID)
    await first.put(OPENID, {"nickname": "刺猬宝宝"})
    await first.aclose()
    await first.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        await first.get(OPENID)
    second = SqliteProfileRepo(str(path), appid=APPID)
    assert (await second.get(OPENID)) == {"nickname": "刺猬宝宝"}
    await second.aclose()


async def test_concurrent_merges_keep_every_field(tmp_path: Path):
    # Two repos on one file stand in for two processes; merges must not lose fields.
    path = tmp_path / "p.sqlite3"
    a, b = SqliteProfileRepo(path, appid=APPID), SqliteProfileRepo(path, appid=APPID)
    await asyncio.gather(*((a if i % 2 else b).put(OPENID, {f"f{i}": str(i)})
                           for i in range(40)))
    got = await a.get(OPENID)
    assert got == {f"f{i}": str(i) for i in range(40)}
    await a.aclose()
    await b.aclose()


def connection_threads() -> list[threading.Thread]:
    """aiosqlite's threads, one a connection (named after the function they run)."""
    return [t for t in threading.enumerate() if t.name.endswith("_connection_worker_thread)")]


def no_connection_thread() -> bool:
    """Whether every connection's thread has ended (a closed one ends right after)."""
    for thread in connection_threads():
        thread.join(timeout=5)
    return connection_threads() == []


async def test_a_repo_dropped_unclosed_says_so_and_stops_its_thread(tmp_path: Path,
                                                                    profile_files):
    r = SqliteProfileRepo(tmp_path / "p.sqlite3", appid=APPID)
    await r.put(OPENID, {"nickname": "x"})
    (thread,) = connection_threads()
    profile_files.remove(r)  # the suite's own safety net lets go of it
    with pytest.warns(ResourceWarning, match="deleted before being closed"):
        del r
    thread.join(timeout=5)
    assert not thread.is_alive()


async def test_close_ends_the_thread_and_a_first_use_racing_it(tmp_path: Path):
    r = SqliteProfileRepo(tmp_path / "p.sqlite3", appid=APPID)
    await r.put(OPENID, {"nickname": "x"})
    await r.aclose()
    assert no_connection_thread()
    racing = SqliteProfileRepo(tmp_path / "p.sqlite3", appid=APPID)
    first_use = asyncio.create_task(racing.get(OPENID))
    await asyncio.sleep(0)  # it is opening the file
    await racing.aclose()
    with pytest.raises(RuntimeError):
        await first_use
    assert no_connection_thread()


async def test_concurrent_first_calls_open_one_connection(tmp_path: Path):
    r = SqliteProfileRepo(tmp_path / "p.sqlite3", appid=APPID)
    await asyncio.gather(*(r.put(f"o{i}", {"n": str(i)}) for i in range(20)))
    assert len(connection_threads()) == 1
    assert await r.get("o7") == {"n": "7"}
    await r.aclose()


async def test_an_unwritable_file_fails_each_call_until_it_can_be_written(tmp_path: Path):
    # Running as root ignores file modes: a file where the directory should be will do.
    blocker = tmp_path / "var"
    blocker.write_text("not a directory")
    r = SqliteProfileRepo(blocker / "profiles.sqlite3", appid=APPID)
    for _ in range(2):
        with pytest.raises(OSError):
            await r.get(OPENID)
        with pytest.raises(OSError):
            await r.put(OPENID, {"nickname": "x"})
    assert no_connection_thread()  # nothing left behind by the failed opens
    blocker.unlink()
    await r.put(OPENID, {"nickname": "x"})  # the same repo, once the path is fixed
    assert await r.get(OPENID) == {"nickname": "x"}
    await r.aclose()


async def test_a_file_sqlite_cannot_write_fails_cleanly(tmp_path: Path):
    path = tmp_path / "p.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    r = SqliteProfileRepo(path, appid=APPID)
    with pytest.raises(sqlite3.DatabaseError):
        await r.get(OPENID)
    assert no_connection_thread()
    await r.aclose()


async def test_the_app_closes_its_profile_file_on_shutdown(make_app, make_settings, tmp_path,
                                                           upstream):
    from tests.test_oauth import client_for, sign_in

    app = make_app(settings=make_settings(WXHOOK_PROFILE_DB=str(tmp_path / "p.sqlite3")))
    async with app.router.lifespan_context(app):
        async with client_for(app) as browser:
            r, _ = await sign_in(browser, upstream)
            assert r.status_code == 303
        assert len(connection_threads()) == 1
    assert no_connection_thread()
    with pytest.raises(RuntimeError):
        await app.state.profiles.repo.get(OPENID)


def test_app_uses_sqlite_without_redis(make_app, settings):
    app = make_app()
    assert isinstance(app.state.profiles.repo, SqliteProfileRepo)
    assert app.state.profiles.repo.path == Path(settings.profile_db)


def test_app_uses_the_store_when_shared_and_a_given_repo_first(make_app, tmp_path):
    class SharedStore(MemoryStore):
        shared = True

    app = make_app(store=SharedStore())
    assert isinstance(app.state.profiles.repo, StoreProfileRepo)
    given = SqliteProfileRepo(tmp_path / "given.sqlite3", appid=APPID)
    assert make_app(profile_repo=given).state.profiles.repo is given


async def test_greeting_name_survives_an_app_restart(make_app, make_settings, upstream,
                                                     sandbox, make_push, tmp_path):
    from tests.test_oauth import client_for, sign_in

    settings = make_settings(WXHOOK_PROFILE_DB=str(tmp_path / "db" / "profiles.sqlite3"))
    sandbox.empty_nicknames = True
    first = make_app(settings=settings)
    async with client_for(first) as browser:
        r, _ = await sign_in(browser, upstream)
        assert r.status_code == 303
    await first.state.profiles.repo.aclose()
    second = make_app(settings=settings)  # a restart: new process state, same file
    push = make_push("subscribe")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=second),
                                 base_url="http://testserver") as client:
        r = await client.post("/wechat", params=push.params, content=push.body)
    assert "Welcome, 刺猬宝宝!" in r.text
    await second.state.profiles.repo.aclose()


async def test_profiles_are_kept_per_account(tmp_path: Path):
    path = tmp_path / "p.sqlite3"
    sandbox_repo = SqliteProfileRepo(path, appid=APPID)
    production = SqliteProfileRepo(path, appid="wxproduction00000001")
    await sandbox_repo.put(OPENID, {"nickname": "沙盒"})
    assert await production.get(OPENID) is None
    await production.put(OPENID, {"nickname": "真名"})
    await production.delete(OPENID)
    assert await sandbox_repo.get(OPENID) == {"nickname": "沙盒"}
    await sandbox_repo.aclose()
    await production.aclose()


async def test_a_file_from_before_the_account_key_goes_to_the_first_real_account(tmp_path):
    path = tmp_path / "p.sqlite3"
    with sqlite3.connect(path) as conn:  # the schema files were written with before
        conn.execute("CREATE TABLE profiles (openid TEXT PRIMARY KEY, data TEXT NOT NULL, "
                     "updated_at REAL NOT NULL)")
        conn.execute("INSERT INTO profiles VALUES (?, ?, 1.0)", (OPENID, '{"nickname": "老"}'))
    conn.close()
    sandbox_repo = SqliteProfileRepo(path, appid=APPID, sandbox_appid=APPID)
    assert await sandbox_repo.get(OPENID) is None       # the sandbox never adopts them
    real = SqliteProfileRepo(path, appid="wxproduction00000001", sandbox_appid=APPID)
    assert await real.get(OPENID) == {"nickname": "老"}
    other = SqliteProfileRepo(path, appid="wxanotheraccount0001", sandbox_appid=APPID)
    assert await other.get(OPENID) is None               # adopted once, by one account
    for r in (sandbox_repo, real, other):
        await r.aclose()


async def test_a_sandbox_oauth_nickname_never_greets_in_production(make_app, make_settings,
                                                                   upstream, make_push,
                                                                   tmp_path):
    """The issue's path: the sandbox's OAuth flow, then production (another appid) with the
    same default profile file; production's user/info gives no nickname."""
    from tests.support import SANDBOX_SECRET
    from tests.test_oauth import client_for, sign_in
    from wxhook.tools.sandbox import create_sandbox

    db = str(tmp_path / "var" / "profiles.sqlite3")
    dev = make_app(settings=make_settings(WXHOOK_PROFILE_DB=db))
    async with client_for(dev) as browser:
        r, _ = await sign_in(browser, upstream)
        assert r.status_code == 303
    await dev.state.profiles.repo.aclose()

    prod_id = "wxproduction00000001"
    wechat = create_sandbox(appid=prod_id, secret=SANDBOX_SECRET)
    wechat.state.sandbox.empty_nicknames = True
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wechat)) as http:
        prod = make_app(settings=make_settings(WECHAT_APP_ID=prod_id, WXHOOK_PROFILE_DB=db,
                                               WECHAT_ENCODING_AES_KEY=""), http=http)
        push = make_push("subscribe")
        async with client_for(prod) as client:
            r = await client.post("/wechat", params=push.params, content=push.body)
        await prod.state.profiles.repo.aclose()
    assert "<Content><![CDATA[Welcome!]]></Content>" in r.text, r.text


@pytest.mark.parametrize("broken", ["unopenable", "corrupt"])
async def test_a_profile_file_that_fails_costs_the_name_not_the_greeting(
        make_app, make_settings, sandbox, make_push, tmp_path, broken):
    # user/info answers no nickname, so every greeting asks the file: one that cannot be
    # opened (a read-only or missing directory) or read must still leave "Welcome!".
    from tests.test_oauth import client_for

    if broken == "unopenable":  # running as root ignores modes: a file where the dir goes
        (tmp_path / "var").write_text("not a directory")
    else:
        (tmp_path / "var").mkdir()
        (tmp_path / "var" / "p.sqlite3").write_bytes(b"this is not a database" * 100)
    sandbox.empty_nicknames = True
    app = make_app(settings=make_settings(WXHOOK_PROFILE_DB=str(tmp_path / "var" / "p.sqlite3")))
    push = make_push("subscribe")
    with capture_logs() as logs:
        async with client_for(app) as client:
            r = await client.post("/wechat", params=push.params, content=push.body)
            for i in range(20):  # a broken file writes one line a minute, not one a greeting
                again = make_push("subscribe", openid=f"oNewFollower{i:016d}")
                await client.post("/wechat", params=again.params, content=again.body)
    assert "<Content><![CDATA[Welcome!]]></Content>" in r.text, r.text
    assert [x["event"] for x in logs].count("profile_repo_unavailable") == 1
