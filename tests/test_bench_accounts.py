"""The benchmark's accounts scenario: what it sends is what a deployment of 1,000 accounts
accepts, each push signed for the account whose URL it goes to."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import pytest

from bench import gen
from bench.openloop import read_pool
from tests.support import started
from wxhook.server.app import create_app
from wxhook.server.config import load_settings
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.xmldoc import reply_fields


def split(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode().split("\r\n")
    method, target, _version = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return method, target, headers, body


@pytest.fixture
def app(tmp_path: Path) -> object:
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(gen.accounts_yaml())  # the file bench/run.py gives the server
    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(accounts),
                             WXHOOK_HANDLERS="bench.handlers:router",
                             WECHAT_API_BASE="http://sandbox")
    return create_app(settings, store=MemoryStore(), metrics=Metrics())


async def test_every_generated_push_is_accepted_at_its_accounts_url(app, tmp_path) -> None:
    creds, seq = gen.Creds(), gen.Sequence()
    paths = gen.write_pool(str(tmp_path / "pool"), "accounts", 600, creds, seq,
                           host="127.0.0.1:1", shards=2)
    raws = [raw for path in paths for raw in read_pool(path)]
    assert len(raws) == 600
    names = collections.Counter()
    async with started(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url="http://testserver") as client:
        first = None
        for raw in raws:
            method, target, headers, body = split(raw)
            assert method == "POST" and int(headers["Content-Length"]) == len(body)
            path = target.split("?", 1)[0]
            names[path.removeprefix("/wechat/")] += 1
            resp = await client.post(target, content=body,
                                     headers={"Content-Type": headers["Content-Type"]})
            assert resp.status_code == 200, (target, resp.text)
            reply = reply_fields(resp.content)
            assert reply["Content"] == f"You said: {gen.TEXT_IN}"
            assert reply["FromUserName"] == gen.TO_USER
            first = first or (target, body)
        # The URL is part of what was signed: the same push at another account's URL is
        # refused (each account checks its own token), so acceptance above is per account.
        assert first is not None
        target, body = first
        name = target.split("?", 1)[0].removeprefix("/wechat/")
        other = "acct0002" if name != "acct0002" else "acct0003"
        moved = await client.post(target.replace(f"/wechat/{name}?", f"/wechat/{other}?"),
                                  content=body)
        assert moved.status_code in (401, 403), moved.text
    known = {name for name, _ in gen.bench_accounts()}
    assert set(names) <= known
    assert len(names) > 400  # 600 pushes over 1,000 accounts reach ~450 of them


def test_accounts_are_chosen_uniformly() -> None:
    counts = collections.Counter(
        p.path for p in gen.pushes("accounts", 20_000, gen.Creds(), gen.Sequence()))
    # 20 pushes an account on average: every one of the 1,000 is reached, none dominates.
    assert len(counts) == gen.ACCOUNTS
    assert max(counts.values()) < 60
