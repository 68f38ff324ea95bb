"""What wxhook keeps in Redis per push: INFO memory before and after N pushes.

    .venv/bin/python bench/redis_memory.py [--pushes 10000]

Starts a redis-server of its own (a free port, no persistence, stopped at the end), sends
N signed pushes through the app in process (half texts answered by the built-in "help"
keyword, half subscribes greeted by name, from the in-process sandbox), and prints what
they left: used_memory before and after, the keys of each kind with their TTL, and what a
steady 1,000 pushes/s keeps (each kind's bytes per push times its TTL). deploy/README.md
quotes its output.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wxhook.server.app import create_app
from wxhook.server.config import load_settings
from wxhook.server.metrics import Metrics
from wxhook.server.store.redis import RedisStore
from wxhook.tools.sandbox import create_sandbox
from wxhook.tools.simulate import push_xml, sign_push

APPID, SECRET, TOKEN = "wx00000000sandbox", "sandbox-app-secret-not-real", "wxhookBench"
RATE = 1000  # pushes/s the steady-state estimate is for


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(url: str, pushes: int) -> None:
    """Send `pushes` pushes through one app on `url`, 100 at a time."""
    sandbox = create_sandbox(appid=APPID, secret=SECRET)
    # A long dedup TTL only so no record expires while the run lasts: the bytes per key
    # do not depend on it, the steady state below uses the default (60 s).
    settings = load_settings(_env_file=None, WECHAT_APP_ID=APPID, WECHAT_APP_SECRET=SECRET,
                             WECHAT_TOKEN=TOKEN, WECHAT_API_BASE="http://sandbox",
                             SESSION_SECRET="bench-session-secret" * 2,
                             WXHOOK_DEDUP_TTL=3600)
    metrics = Metrics()
    # A generous timeout: this one process both drives and serves, so a reply may wait
    # on the loop longer than wxhook's own 0.3 s, and this run is about bytes, not time.
    store = RedisStore(url, metrics=metrics, timeout=5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox)) as upstream:
        app = create_app(settings, http=upstream, store=store, metrics=metrics)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://wxhook") as client:
            async def one(i: int) -> None:
                openid = f"oBenchMemory{i:016d}"
                xml = (push_xml("text", openid=openid, text="help") if i % 2
                       else push_xml("subscribe", openid=openid))
                push = sign_push(xml, token=TOKEN, openid=openid)
                r = await client.post("/wechat", params=push.params, content=push.body)
                assert r.status_code == 200 and b"<xml>" in r.content, r.content

            for start in range(0, pushes, 100):
                await asyncio.gather(*(one(i) for i in range(start, min(pushes, start + 100))))
            while app.webhook._running:  # replies are recorded just after they are sent
                await asyncio.sleep(0.01)
    await store.aclose()
    if metrics.store_fallbacks._value.get():
        raise SystemExit("Redis did not answer in time (a loaded machine?): some keys stayed "
                         "in process memory, so the figures would be low; run it again")


def used(r: redis.Redis) -> int:
    """used_memory, after the server had a moment to settle its lazy frees."""
    time.sleep(0.2)
    return int(r.info("memory")["used_memory"])


def kinds(r: redis.Redis) -> dict[str, list[bytes]]:
    """Keys by kind: the part after wxhook:<appid>: up to the next colon."""
    out: dict[str, list[bytes]] = {}
    for key in r.scan_iter(count=1000):
        kind = key.decode().split(":")[2]
        out.setdefault(kind, []).append(key)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pushes", type=int, default=10000)
    args = p.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed")
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL)
        try:
            r = redis.Redis(port=port)
            for _ in range(100):
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            url = f"redis://127.0.0.1:{port}/0"
            asyncio.run(drive(url, 2))  # the token, connections, scripts: not per push
            r.delete(*[k for k in r.scan_iter() if b":token" not in k])
            before = used(r)
            asyncio.run(drive(url, args.pushes))
            after = used(r)
            found = kinds(r)
            print(f"redis-server {r.info('server')['redis_version']}, {args.pushes} pushes: "
                  f"used_memory {before:,} -> {after:,} B "
                  f"({(after - before) / args.pushes:.0f} B per push)")
            # Each push leaves one key of each kind. MEMORY USAGE counts a key's name, value
            # and object; what the server spends besides (its dict and expiry entries, the
            # tables' slots) is shared out between the kinds equally.
            per_push = (after - before) / args.pushes
            sizes = {kind: sum(r.memory_usage(k) or 0 for k in keys[:200]) / len(keys[:200])
                     for kind, keys in found.items() if kind != "token"}
            rest = (per_push - sum(sizes.values())) / len(sizes)
            share = {kind: (size + rest) * args.pushes for kind, size in sizes.items()}
            for kind, keys in sorted(found.items()):
                if kind == "token":
                    continue
                ttl = max(r.pttl(k) for k in keys[:50]) / 1000
                print(f"  {kind:8s} {len(keys):7d} keys  {share[kind] / len(keys):5.0f} B each "
                      f"(e.g. {keys[0].decode()[:60]}, TTL now {ttl:.0f} s)")
            steady = {"nonce": 301, "dedup": 60}  # the timestamp window + 1 s, WXHOOK_DEDUP_TTL
            total = 0.0
            for kind, seconds in steady.items():
                if kind in share:
                    mb = share[kind] / args.pushes * RATE * seconds / 1e6
                    total += mb
                    print(f"  at {RATE} pushes/s, {kind} keys live {seconds} s: {mb:.0f} MB")
            print(f"  steady state at {RATE} pushes/s: about {total:.0f} MB")
        finally:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
