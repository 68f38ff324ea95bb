"""CPU per push without HTTP: the /wechat ASGI callable driven directly, 64 pushes at a time.

    .venv/bin/python bench/inproc.py [plain|aes|subscribe|rules] [--pushes 60000] [--runs 5]
    .venv/bin/python bench/inproc.py plain --pushes 600000 --runs 1   # a long flood's peak RSS
    .venv/bin/python bench/inproc.py accounts --spread 1   # all 1,000 built, pushes to one

uvicorn, the network and wrk are out of the picture, so this measures wxhook's own work per
push (guard, parse, nonce, dedup, route, render, log line, metrics) in process CPU time, far
steadier on a shared machine than req/s. Each run is a fresh process pinned to core 0; the
minimum over the runs is the figure to compare. Log lines go to a temporary file, as in
production they go to a file or a pipe. subscribe's lookups go to an httpx.MockTransport
that answers at once with whole user/info answers (token, user/info, batchget: a few us a
call of its own), so that figure is the greeting's whole path with its share of batched
lookups (64 a batch: the pushes in flight together). rules: the plain
pushes answered by a rules file of 500 keyword rules and a default reply (bench/rules.py).
Pushes are generated in chunks outside the timed part, so the peak RSS printed (VmHWM) is
the server's, not the pool's: with --pushes large it is the memory a long flood holds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(scenario: str, n: int, accounts: int, spread: int | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    import uvloop

    from bench import gen

    creds = gen.Creds()
    os.environ.update({
        "WECHAT_APP_ID": creds.app_id, "WECHAT_APP_SECRET": creds.app_secret,
        "WECHAT_TOKEN": creds.token, "WECHAT_API_BASE": "http://127.0.0.1:9",
        "WXHOOK_LOG_LEVEL": "INFO", "WXHOOK_PROFILE_DB": os.environ["BENCH_PROFILE_DB"],
    })
    if scenario == "aes":
        os.environ["WECHAT_ENCODING_AES_KEY"] = creds.encoding_aes_key
    if scenario == "accounts":
        path = Path(os.environ["BENCH_PROFILE_DB"]).with_name("accounts.yaml")
        path.write_text(gen.accounts_yaml(accounts))
        os.environ["WXHOOK_ACCOUNTS"] = str(path)
    import httpx
    import orjson

    from bench.handlers import router

    if scenario == "rules":
        from bench.rules import rules_yaml

        path = Path(os.environ["BENCH_PROFILE_DB"]).with_name("rules.yaml")
        path.write_text(rules_yaml(500) + "default: {reply: 'Noted.', once_per: 3600}\n")
        os.environ["WXHOOK_RULES"] = str(path)
    from wxhook.server.app import create_app
    from wxhook.server.config import Settings
    from wxhook.server.logs import configure_logging

    def profile(openid: str) -> dict[str, object]:
        # A whole user/info answer (the sandbox's fields), so parsing costs what it does.
        return {"subscribe": 1, "openid": openid, "nickname": "Follower-" + openid[-6:],
                "sex": 0, "language": "zh_CN", "city": "", "province": "", "country": "",
                "headimgurl": f"https://thirdwx.qlogo.cn/mmopen/sandbox/{openid[-6:]}/132",
                "subscribe_time": 1600000000, "unionid": "o" + openid[1:], "remark": "",
                "groupid": 0, "tagid_list": [], "subscribe_scene": "ADD_SCENE_QR_CODE",
                "qr_scene": 0, "qr_scene_str": ""}

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("_token"):
            return httpx.Response(200, content=b'{"access_token":"T%s","expires_in":7200}'
                                  % (b"0" * 40))
        if request.url.path.endswith("/batchget"):
            users = orjson.loads(request.content)["user_list"]
            return httpx.Response(200, content=orjson.dumps(
                {"user_info_list": [profile(u["openid"]) for u in users]}))
        return httpx.Response(200, content=orjson.dumps(profile(request.url.params["openid"])))

    configure_logging(level="INFO", fmt="json")
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    # subscribe: the server's own router (bench's handlers, then the greeting), as
    # WXHOOK_HANDLERS gives it in bench/run.py; rules: the server's own router with the rules
    # file alone; the others: bench's router alone.
    if scenario == "subscribe":
        os.environ["WXHOOK_HANDLERS"] = "bench.handlers:router"
    own = scenario in ("subscribe", "rules")
    app = create_app(Settings(), router=None if own else router, http=http)
    # accounts: a warm-up long enough to build every account (20 pushes each on average).
    warm = max(20 * accounts, 1000) if scenario == "accounts" else 1000
    seq = gen.Sequence()
    kind = "plain" if scenario == "rules" else scenario
    # --spread: every account built in the warm-up, the measured pushes to the first few
    # only (the same objects, a smaller share of them touched).
    pushes = itertools.chain(
        gen.pushes(kind, warm, creds, seq, accounts=accounts),
        gen.pushes(kind, n, creds, seq, accounts=accounts, spread=spread))

    async def one(push: gen.Push) -> None:
        scope = {"type": "http", "method": "POST", "path": push.path,
                 "query_string": push.query.encode(), "client": ("127.0.0.1", 1),
                 "headers": [(b"content-length", str(len(push.body)).encode())]}
        messages = [{"type": "http.request", "body": push.body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"HTTP {sent[0]['status']}: {sent[1]['body'][:200]!r}")

    async def main() -> None:
        async with app.router.lifespan_context(app):
            for push in itertools.islice(pushes, warm):
                await one(push)
            spent = 0.0
            while chunk := list(itertools.islice(pushes, 8192)):
                started = time.process_time()
                for i in range(0, len(chunk), 64):
                    await asyncio.gather(*(one(p) for p in chunk[i:i + 64]))
                spent += time.process_time() - started
            print(f"{spent / n * 1e6:.1f} {_peak_rss_mb():.1f}", file=sys.stderr)

    uvloop.run(main())


def gen_accounts() -> int:
    sys.path.insert(0, str(ROOT))
    from bench import gen

    return gen.ACCOUNTS


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("scenario", nargs="?", default="plain",
                   choices=("plain", "aes", "subscribe", "rules", "accounts"))
    p.add_argument("--pushes", type=int, default=60_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--accounts", type=int, default=gen_accounts(),
                   help="accounts: how many the pushes are spread over")
    p.add_argument("--spread", type=int, default=None,
                   help="accounts: measure pushes to the first N accounts only (all built)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.scenario, a.pushes, a.accounts, a.spread)
        return 0
    figures: list[float] = []
    peaks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BENCH_PROFILE_DB=str(Path(tmp) / "profiles.db"))
        for _ in range(a.runs):
            with open(Path(tmp) / "log", "wb") as log:
                done = subprocess.run(
                    ["taskset", "-c", "0", sys.executable, __file__, a.scenario, "--child",
                     "--pushes", str(a.pushes), "--accounts", str(a.accounts),
                     *(["--spread", str(a.spread)] if a.spread else [])],
                    stdout=log, stderr=subprocess.PIPE, env=env, check=False)
            if done.returncode:
                print(done.stderr.decode(), file=sys.stderr)
                return 1
            cpu, rss = done.stderr.decode().split()[-2:]
            figures.append(float(cpu))
            peaks.append(float(rss))
    print(f"{a.scenario}: {min(figures):.1f} us of CPU a push (min of {a.runs}; all: "
          + ", ".join(f"{f:.1f}" for f in sorted(figures)) + f"); peak RSS {max(peaks):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
