"""The accounts file reloaded in a real `wxhook serve`: on a file change and on SIGHUP, an
account added, changed and removed, a bad file kept out; with several workers every one
reloads and one started again runs the last good set. And one account's hanging WeChat API
while another account is greeted on time, through each account's own connections."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    WXHOOK,
    Workers,
    free_port,
    process,
    sandbox_process,
    server_env,
    until,
    worker_pids,
)
from wxhook.server.crypto import MessageCrypto
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

pytestmark = pytest.mark.slow

OPENID = "oSandboxDemoFollower00000001"
SHOP = {"name": "shop", "app_id": "wxshop00000000001", "secret": "shop-secret-1",
        "token": "shopToken1", "aes": None}
NEWS = {"name": "news", "app_id": "wxnews00000000002", "secret": "news-secret-2",
        "token": "newsToken2", "aes": "N" * 18 + "ews0123456789abcdefghijkl"}
THIRD = {"name": "third", "app_id": "wxthird0000000003", "secret": "third-secret-3",
         "token": "thirdToken3", "aes": None}
SECRETS = ("shop-secret-1", "shopToken1", "news-secret-2", "newsToken2", "newsToken9",
           "third-secret-3", "thirdToken3", str(NEWS["aes"]))
# shop's secrets come from the server's environment, third's from .env written later.
SERVER_ENV = {"SHOP_APP_SECRET": str(SHOP["secret"]), "SHOP_TOKEN": str(SHOP["token"])}


def entry(acct: dict[str, Any], **fields: str) -> str:
    values = {"name": acct["name"], "app_id": acct["app_id"], "app_secret": acct["secret"],
              "token": acct["token"], **fields}
    if acct["aes"]:
        values.update(encoding_aes_key=str(acct["aes"]), message_mode="safe")
    return "  - " + "\n    ".join(f"{k}: {v}" for k, v in values.items()) + "\n"


SHOP_ENTRY = entry(SHOP, app_secret="${SHOP_APP_SECRET}", token="${SHOP_TOKEN}")
THIRD_ENTRY = entry(THIRD, app_secret="${THIRD_APP_SECRET}", token="${THIRD_TOKEN}")


def write(path: Path, *entries: str) -> None:
    path.write_text("accounts:\n" + "".join(entries), encoding="utf-8")


def greet(url: str, acct: dict[str, Any], *, openid: str = OPENID,
          timeout: float = 10.0) -> tuple[int, str]:
    """Status and greeting of a subscribe push signed (and sealed) for `acct`."""
    crypto = (MessageCrypto(str(acct["token"]), [str(acct["aes"])], str(acct["app_id"]))
              if acct["aes"] else None)
    push = sign_push(push_xml("subscribe", openid=openid), token=str(acct["token"]),
                     openid=openid, crypto=crypto)
    r = httpx.post(f"{url}/wechat/{acct['name']}", params=push.params, content=push.body,
                   timeout=timeout, headers={"connection": "close"})
    if r.status_code != 200:
        return r.status_code, ""
    return 200, decode_reply(r.content, crypto=crypto).get("Content", "")


def accounts_check(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/readyz?verbose", timeout=5, headers={"connection": "close"})
    assert r.status_code == 200, r.text
    check: dict[str, Any] = r.json()["checks"]["accounts"]
    return check


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            found.append(event)
    return found


def serve(base: str, tmp_path: Path, *, workers: int = 1, **extra: str) -> tuple[Any, str, Path]:
    port = free_port()
    log = tmp_path / "server.log"
    env = server_env(base, WXHOOK_ACCOUNTS=str(tmp_path / "accounts.yaml"), **SERVER_ENV,
                     **extra)
    args = [WXHOOK, "serve", "--port", str(port), "--workers", str(workers)]
    # In tmp_path: the .env the test writes there is the server's.
    return (process(args, env=env, ready_url=f"http://127.0.0.1:{port}/healthz",
                    log_path=log, cwd=tmp_path), f"http://127.0.0.1:{port}", log)


def sandbox_for(tmp_path: Path) -> Any:
    """`wxhook sandbox` standing in for every account the file names, as it changes."""
    return sandbox_process(env={"WXHOOK_ACCOUNTS": str(tmp_path / "accounts.yaml"),
                                **SERVER_ENV}, cwd=tmp_path)


def rewrite_keeping_stamp(path: Path, old: str, new: str) -> None:
    """Change the content but not what the watcher looks at: only SIGHUP can reload it."""
    assert len(old) == len(new)
    st = path.stat()
    path.write_text(path.read_text().replace(old, new))  # same inode, same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


WELCOME = (200, "Welcome, 刺猬宝宝!")
DEADLINE = 2.0


def test_accounts_added_changed_removed_and_a_bad_file_in_a_real_server(tmp_path) -> None:
    path = tmp_path / "accounts.yaml"
    write(path, SHOP_ENTRY, entry(NEWS))
    with sandbox_for(tmp_path) as base:
        server, url, log = serve(base, tmp_path)
        with server as proc:
            assert greet(url, SHOP) == greet(url, NEWS) == WELCOME
            assert greet(url, THIRD)[0] == 404
            # Added by a file change; its ${VAR}s from .env, written after the start.
            (tmp_path / ".env").write_text(f"THIRD_APP_SECRET={THIRD['secret']}\n"
                                           f"THIRD_TOKEN={THIRD['token']}\n")
            write(path, SHOP_ENTRY, entry(NEWS), THIRD_ENTRY)
            until(lambda: greet(url, THIRD) == WELCOME)
            assert accounts_check(url)["loaded_by"] == "file changed"
            # Changed, seen by SIGHUP only: news's old token refused, the new one answered.
            rewrite_keeping_stamp(path, "newsToken2", "newsToken9")
            time.sleep(1.5)
            assert greet(url, NEWS) == WELCOME  # the watcher could not see it
            os.kill(proc.pid, signal.SIGHUP)
            until(lambda: greet(url, NEWS)[0] == 403)
            assert greet(url, {**NEWS, "token": "newsToken9"}) == WELCOME
            assert accounts_check(url)["loaded_by"] == "SIGHUP"
            # Removed: 404 from then on, the others served as before.
            write(path, SHOP_ENTRY, THIRD_ENTRY)
            until(lambda: greet(url, {**NEWS, "token": "newsToken9"})[0] == 404)
            assert greet(url, SHOP) == greet(url, THIRD) == WELCOME
            version = accounts_check(url)["version"]
            # A bad file: the last good set stays, the instance ready, one line says why.
            path.write_text(path.read_text().replace("name: third", "name: Third!"))
            until(lambda: accounts_check(url)["last_error"] is not None)
            check = accounts_check(url)
            assert check["version"] == version and check["accounts"] == 2
            assert "accounts[1].name" in check["last_error"]
            assert greet(url, SHOP) == greet(url, THIRD) == WELCOME
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
            assert 'wxhook_accounts_reloads_total{result="failed"} 1.0' in metrics
            assert 'wxhook_accounts_reloads_total{result="ok"} 3.0' in metrics
            assert proc.poll() is None
    text = log.read_text()
    (failed,) = events(log, "accounts_reload_failed")
    assert failed["why"] == "file changed" and failed["kept"] == version
    assert [(e["added"], e["changed"], e["removed"]) for e in events(log, "accounts_reloaded")] \
        == [(["third"], [], []), ([], ["news"], []), ([], [], ["news"])]
    assert [e["account"] for e in events(log, "account_retired")] == ["news", "news"]
    assert not any(secret in text for secret in SECRETS)
    assert "Traceback" not in text


def test_every_worker_reloads_and_one_started_again_runs_the_last_good_set(
        tmp_path, redis_url) -> None:
    path = tmp_path / "accounts.yaml"
    write(path, SHOP_ENTRY, entry(NEWS))
    (tmp_path / ".env").write_text(f"THIRD_APP_SECRET={THIRD['secret']}\n"
                                   f"THIRD_TOKEN={THIRD['token']}\n")
    with sandbox_for(tmp_path) as base:
        server, url, log = serve(base, tmp_path, workers=2, REDIS_URL=redis_url,
                                 PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
        with server as proc:
            until(lambda: len(worker_pids(proc.pid)) == 2, timeout=30)
            workers = Workers(proc.pid, lambda: accounts_check(url))
            seen, every_worker = workers.seen, workers.every
            try:
                until(every_worker(lambda s: s["accounts"] == 2), timeout=40)
                first = seen[min(workers.serving)]["version"]
                # SIGHUP, passed on to every worker: each serves the third account.
                write(path, SHOP_ENTRY, entry(NEWS), THIRD_ENTRY)
                os.kill(proc.pid, signal.SIGHUP)
                seen.clear()
                until(every_worker(lambda s: s["version"] != first and s["accounts"] == 3),
                      timeout=40)
                good = seen[min(workers.serving)]["version"]
                for _ in range(6):  # whichever worker answers
                    assert greet(url, THIRD) == WELCOME
                path.write_text("accounts: [\n")
                seen.clear()
                until(every_worker(lambda s: s["last_error"] is not None), timeout=40)
            except AssertionError:
                raise AssertionError(f"workers {workers.serving}, answers {seen}") from None
            victim, new = workers.kill_one(replaced_within=30)
            assert seen[new]["version"] == good and seen[new]["accounts"] == 3
            assert seen[new]["loaded_by"] == "last good copy"
            assert "not valid YAML" in seen[new]["last_error"]
            for _ in range(6):
                assert greet(url, THIRD) == WELCOME
            time.sleep(2)  # started once, and stays: no crash loop
            assert worker_pids(proc.pid) == workers.serving - {victim} | {new}
            assert proc.poll() is None
    text = log.read_text()
    assert "Traceback" not in text
    assert not any(secret in text for secret in SECRETS)


def test_one_account_hanging_upstream_leaves_the_others_greetings_on_time(tmp_path) -> None:
    path = tmp_path / "accounts.yaml"
    write(path, SHOP_ENTRY, entry(NEWS))
    with sandbox_for(tmp_path) as base:
        server, url, _ = serve(base, tmp_path, WXHOOK_DEADLINE=str(DEADLINE))
        with server:
            assert greet(url, SHOP) == greet(url, NEWS) == WELCOME  # both tokens in hand
            # news's WeChat API now hangs on every call (past the HTTP timeout).
            r = httpx.post(f"{base}/_sandbox/faults", timeout=5, json={
                "path": "*", "latency": 60.0, "appid": NEWS["app_id"]})
            assert r.status_code == 200, r.text
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                # New news followers at once, each needing user/info: they wait out the
                # deadline on news's hanging API ...
                news = [pool.submit(greet, url, NEWS, openid=f"oHangingNews{i:016d}",
                                    timeout=20) for i in range(30)]
                time.sleep(0.5)
                # ... while new shop followers are greeted by name (user/info from shop's
                # API, through shop's own connections), at once.
                for i in range(5):
                    openid = f"oShopOnTime{i:017d}"
                    started = time.monotonic()
                    assert greet(url, SHOP, openid=openid) == (
                        200, f"Welcome, Follower-{openid[-6:]}!")
                    # By name: shop's user/info answered before its deadline. Inside
                    # it: not held behind news's pushes (a loaded machine adds a little).
                    assert time.monotonic() - started < DEADLINE
                    assert not all(f.done() for f in news)
                # news answers within its own deadline, without the name it cannot fetch.
                assert {f.result() for f in news} == {(200, "Welcome!")}
