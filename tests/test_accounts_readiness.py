"""/readyz's operator view with an accounts file, through the real routes: each account in
use with its token, faults by name, the accounts no push needed yet counted, and the same
bounded answer for a thousand accounts; the token gauge per account; the start-up line."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from tests import test_accounts_routes as routes
from tests.support import started
from tests.test_accounts_routes import NEWS, SHOP, push_for, send
from wxhook.server.metrics import Metrics
from wxhook.server.readiness import MAX_LISTED, NOT_YET_USED
from wxhook.tools.sandbox import Fault

release, sandbox_app, sandbox, build, connect = (
    routes.release, routes.sandbox_app, routes.sandbox, routes.build, routes.connect)
COUNTS = ("ok", "accounts", "built", "not_yet_used", "faulty")


async def test_the_operator_view_reports_each_account_in_use(build, connect, sandbox,
                                                               tmp_path: Path) -> None:
    metrics = Metrics()
    app = build(metrics=metrics)
    client = await connect(app)
    sandbox.add_fault(Fault(path="/cgi-bin/stable_token", errcode=40125,
                            appid=str(NEWS["app_id"])))
    async with started(app):
        view = (await client.get("/readyz?verbose")).json()
        accounts = view["checks"]["accounts"]
        assert accounts["loaded_by"] == "start"  # the file in force, in the same check
        assert {k: accounts[k] for k in (*COUNTS, "faults", "others")} == {
            "ok": True, "accounts": 2, "built": 0, "not_yet_used": 2, "faulty": 0,
            "faults": {}, "others": {"shop": NOT_YET_USED, "news": NOT_YET_USED}}  # whole
        await send(client, "/wechat/shop", push_for(SHOP))
        await send(client, "/wechat/news", push_for(NEWS))  # its token is refused: 40125
        resp = await client.get("/readyz?verbose")
        assert resp.status_code == 200  # a fault of WeChat's never fails readiness
        view = resp.json()
        accounts = view["checks"]["accounts"]
        assert (view["ready"], view["degraded"]) == (True, ["accounts"])
        assert {k: accounts[k] for k in COUNTS} == {
            "ok": False, "accounts": 2, "built": 2, "not_yet_used": 0, "faulty": 1}
        assert list(accounts["faults"]) == ["news"]
        assert list(accounts["others"]) == ["shop"]
        assert accounts["others"]["shop"]["token"]["ok"] is True
        assert "others_not_listed" not in accounts
        news = accounts["faults"]["news"]["token"]
        assert news["ok"] is False and news["error"]["errcode"] == 40125 and news["fix"]
        shop = (await client.get("/readyz?verbose&account=shop")).json()["checks"]["account"]
        assert shop["ok"] is True and shop["token"]["cached"] is True
        assert shop["app_id"] == SHOP["app_id"]
        assert NEWS["secret"] not in resp.text and SHOP["secret"] not in resp.text

        def up(account: str) -> float | None:
            return metrics.registry.get_sample_value(
                "wxhook_dependency_up", {"dependency": "token", "account": account})
        assert (up("shop"), up("news")) == (1, 0)
        assert (await client.get("/readyz")).json() == {"ready": True}
        # news's secret is fixed in the file: its old pieces' alert does not stay behind
        # until a push builds it again (a quiet account may take hours).
        path = tmp_path / "accounts.yaml"
        path.write_text(path.read_text().replace(str(NEWS["secret"]), "news-secret-3"))
        assert app.state.accounts.reload("SIGHUP")
        for _ in range(100):
            if not app.state.hub.retiring:
                break
            await asyncio.sleep(0.02)
        await client.get("/readyz?verbose")
        assert (up("shop"), up("news")) == (1, None)


async def test_the_operator_view_of_a_thousand_accounts_is_bounded(tmp_path: Path, build,
                                                                   connect) -> None:
    app = build(many(tmp_path, 1000))  # appids the sandbox does not know: tokens fail
    client = await connect(app)
    async with started(app):
        for i in range(MAX_LISTED + 10):
            acct = {"name": f"acct{i:04d}", "app_id": f"wxgen{i:012d}",
                    "token": f"token{i:04d}", "aes": None}
            assert (await send(client, f"/wechat/acct{i:04d}", push_for(acct))).status_code == 200
        resp = await client.get("/readyz?verbose")
        accounts = resp.json()["checks"]["accounts"]
        assert {k: accounts[k] for k in COUNTS} == {
            "ok": False, "accounts": 1000, "built": MAX_LISTED + 10,
            "not_yet_used": 1000 - MAX_LISTED - 10, "faulty": MAX_LISTED + 10}
        assert list(accounts["faults"]) == [f"acct{i:04d}" for i in range(MAX_LISTED)]
        assert accounts["faults_not_listed"] == 10
        assert accounts["others"] == {} and accounts["others_not_listed"] == 970
        assert len(resp.content) < 20_000  # not one entry per account of the file
        unused = (await client.get("/readyz?verbose&account=acct0999")).json()
        assert unused["checks"]["account"] == {"ok": True, "name": "acct0999",
                                               "state": NOT_YET_USED}
        assert "acct0999" not in app.state.hub.built  # looking builds nothing
        nobody = (await client.get("/readyz?verbose&account=nobody")).json()
        assert nobody["checks"]["account"]["ok"] is False


def many(tmp_path: Path, n: int) -> str:
    lines = ["accounts:"]
    for i in range(n):
        lines += [f"  - name: acct{i:04d}", f"    app_id: wxgen{i:012d}",
                  f"    app_secret: secret-{i}", f"    token: token{i:04d}"]
    path = tmp_path / "many.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


async def test_the_startup_line_names_the_accounts_not_wechat_settings(tmp_path: Path,
                                                                       build) -> None:
    for path, count, names in [
            (None, 2, "shop, news"),
            (many(tmp_path, 1000), 1000,
             "acct0000, acct0001, acct0002, acct0003, acct0004, ... (995 more)")]:
        app = build(path)
        with capture_logs() as logs:
            async with started(app):
                pass
        line = next(line for line in logs if line["event"] == "startup")
        assert (line["accounts"], line["account_names"]) == (count, names)
        assert "app_id" not in line and "app_secret" not in line and "token" not in line
        assert line["api_base"] == "http://sandbox"
        assert "secret-1" not in str(line) and str(SHOP["secret"]) not in str(line)


async def test_a_few_faults_leave_room_for_the_healthy_and_the_unused(tmp_path: Path, build,
                                                                      connect,
                                                                      sandbox) -> None:
    app = build(many(tmp_path, 100))
    client = await connect(app)
    sandbox.add_account("wxgen000000000001", "secret-1")  # acct0001's token works
    async with started(app):
        for i in (1, 0):  # acct0000's appid is unknown to the sandbox: its token fails
            acct = {"name": f"acct{i:04d}", "app_id": f"wxgen{i:012d}",
                    "token": f"token{i:04d}", "aes": None}
            assert (await send(client, f"/wechat/acct{i:04d}", push_for(acct))).status_code == 200
        accounts = (await client.get("/readyz?verbose")).json()["checks"]["accounts"]
    assert list(accounts["faults"]) == ["acct0000"]
    others = accounts["others"]
    assert list(others) == [f"acct{i:04d}" for i in range(1, MAX_LISTED)]
    assert others["acct0001"]["token"]["ok"] is True
    assert set(list(others.values())[1:]) == {NOT_YET_USED}
    assert accounts["others_not_listed"] == 100 - MAX_LISTED


async def test_a_removed_account_leaves_no_gauge_behind(tmp_path: Path, build, connect,
                                                        sandbox) -> None:
    from tests.test_accounts_reload import entry, write

    path = tmp_path / "reload.yaml"
    write(path, entry(SHOP), entry(NEWS))
    sandbox.add_fault(Fault(path="/cgi-bin/stable_token", errcode=40125,
                            appid=str(NEWS["app_id"])))
    metrics = Metrics()
    app = build(str(path), metrics=metrics)
    client = await connect(app)

    def up(account: str) -> float | None:
        return metrics.registry.get_sample_value(
            "wxhook_dependency_up", {"dependency": "token", "account": account})
    async with started(app):
        await send(client, "/wechat/shop", push_for(SHOP))
        await send(client, "/wechat/news", push_for(NEWS))
        await client.get("/readyz?verbose")
        assert (up("shop"), up("news")) == (1, 0)  # news's token alert would fire
        write(path, entry(SHOP))
        assert app.state.accounts.reload("SIGHUP")
        for _ in range(100):
            if not app.state.hub.retiring:
                break
            await asyncio.sleep(0.05)
        accounts = (await client.get("/readyz?verbose")).json()["checks"]["accounts"]
        # news is gone: no series of it for an alert to stay on; shop's is as it was.
        assert (up("shop"), up("news")) == (1, None)
        assert accounts["faulty"] == 0 and "news" not in accounts["others"]
