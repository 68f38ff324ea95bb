"""Pre-generate signed WeChat pushes for the benchmark, all distinct.

Every push has its own nonce, MsgId and openid, a timestamp from the last minute,
a valid `signature` (and `msg_signature` + AES-256-CBC body in safe mode), so the
server's replay window, nonce memory and dedup run for real instead of being bypassed.

Pools are written as raw HTTP/1.1 requests in length-prefixed records
("<len>\\n<bytes>"), one file per wrk thread (`<prefix>.<thread>`), so the Lua side
only reads and returns bytes and two threads never send the same request.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import itertools
import os
import random
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SCENARIOS = ("plain", "aes", "subscribe", "accounts")
# The accounts scenario: plain pushes spread uniformly over this many accounts of one
# accounts file (WXHOOK_ACCOUNTS), each signed with its own account's token.
ACCOUNTS = 1000
TO_USER = "gh_3f1e8d2a9b7c"
TEXT_IN = "hello wxhook"


@dataclass(frozen=True)
class Creds:
    """What the pushes are signed and encrypted with; the servers get the same values."""

    app_id: str = "wxbench0000000001"
    app_secret: str = "benchsecret0123456789abcdef012345"
    token: str = "benchtoken"
    encoding_aes_key: str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@functools.cache
def bench_accounts(n: int = ACCOUNTS) -> tuple[tuple[str, Creds], ...]:
    """n accounts, (name, credentials), the same on every call: the server's accounts file
    (accounts_yaml) and the pushes (scenario "accounts") are generated from this list."""
    return tuple(
        (f"acct{i:04d}", Creds(app_id=f"wxbench{i:010d}", app_secret=f"benchsecret{i:022d}",
                               token=f"benchtoken{i:04d}"))
        for i in range(1, n + 1))


def accounts_yaml(n: int = ACCOUNTS) -> str:
    """The accounts file for bench_accounts(n): plain mode, no rules, the default handlers."""
    lines = ["accounts:"]
    for name, c in bench_accounts(n):
        lines += [f"  - name: {name}", f"    app_id: {c.app_id}",
                  f"    app_secret: {c.app_secret}", f"    token: {c.token}"]
    return "\n".join(lines) + "\n"


class Sequence:
    """Run-wide counters: nonces and MsgIds never repeat within one benchmark run."""

    def __init__(self) -> None:
        self._nonce = itertools.count(1_000_000_000 + secrets.randbelow(1_000_000_000))
        self._msgid = itertools.count(6_000_000_000_000_000_000 + secrets.randbelow(10**15))

    def nonce(self) -> str:
        return str(next(self._nonce))

    def msgid(self) -> int:
        return next(self._msgid)


def openid() -> str:
    """'o' + 27 chars of [A-Za-z0-9_-], like a real openid (160 random bits)."""
    return "o" + secrets.token_urlsafe(20)[:27]


def sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class Encryptor:
    """WeChat safe-mode encryption (protocol page section 4); cross-checked with wechatpy."""

    def __init__(self, encoding_aes_key: str, app_id: str) -> None:
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.app_id = app_id.encode()

    def encrypt(self, xml: str) -> str:
        msg = xml.encode()
        plain = os.urandom(16) + struct.pack(">I", len(msg)) + msg + self.app_id
        pad = 32 - len(plain) % 32
        plain += bytes([pad]) * pad
        enc = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).encryptor()
        return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def text_xml(user: str, ts: int, msgid: int) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{TO_USER}]]></ToUserName>"
        f"<FromUserName><![CDATA[{user}]]></FromUserName>"
        f"<CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{TEXT_IN}]]></Content><MsgId>{msgid}</MsgId></xml>"
    )


def subscribe_xml(user: str, ts: int) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{TO_USER}]]></ToUserName>"
        f"<FromUserName><![CDATA[{user}]]></FromUserName>"
        f"<CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[]]></EventKey></xml>"
    )


@dataclass(frozen=True)
class Push:
    """One signed push: the query string, the body, and what the sender's openid is."""

    query: str
    body: bytes
    openid: str
    timestamp: str
    nonce: str
    path: str = "/wechat"


def pushes(
    scenario: str, n: int, creds: Creds, seq: Sequence, *, now: float | None = None,
    accounts: int = ACCOUNTS, spread: int | None = None,
) -> Iterator[Push]:
    """Yield n distinct, freshly signed pushes of one scenario.

    "accounts": plain pushes, each to /wechat/{name} of an account chosen uniformly from
    bench_accounts(accounts) (from its first `spread` only, when given) and signed with that
    account's token (`creds` is not used).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    crypt = Encryptor(creds.encoding_aes_key, creds.app_id) if scenario == "aes" else None
    base = int(now if now is not None else time.time())
    chosen = bench_accounts(accounts)[:spread] if scenario == "accounts" else None
    path = "/wechat"
    for i in range(n):
        if chosen is not None:
            name, creds = random.choice(chosen)
            path = f"/wechat/{name}"
        ts = base - (i % 20)  # spread over the last 20 s, well inside the ±300 s window
        tss = str(ts)
        nonce = seq.nonce()
        user = openid()
        if scenario == "subscribe":
            xml = subscribe_xml(user, ts)
        else:
            xml = text_xml(user, ts, seq.msgid())
        sig = sha1_sorted(creds.token, tss, nonce)
        query = f"signature={sig}&timestamp={tss}&nonce={nonce}&openid={user}"
        if crypt is not None:
            encrypted = crypt.encrypt(xml)
            msg_sig = sha1_sorted(creds.token, tss, nonce, encrypted)
            query += f"&encrypt_type=aes&msg_signature={msg_sig}"
            xml = (
                f"<xml><ToUserName><![CDATA[{TO_USER}]]></ToUserName>"
                f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
            )
        yield Push(query, xml.encode(), user, tss, nonce, path)


def raw_request(push: Push, host: str) -> bytes:
    head = (
        f"POST {push.path}?{push.query} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: text/xml\r\nContent-Length: {len(push.body)}\r\n\r\n"
    )
    return head.encode() + push.body


def write_pool(
    prefix: str,
    scenario: str,
    n: int,
    creds: Creds,
    seq: Sequence,
    *,
    host: str,
    shards: int = 1,
) -> list[str]:
    """Write n distinct raw requests round-robin into `shards` files; return their paths."""
    paths = [f"{prefix}.{k}" for k in range(shards)]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(p, "wb", buffering=1 << 20)) for p in paths]
        for i, push in enumerate(pushes(scenario, n, creds, seq)):
            raw = raw_request(push, host)
            files[i % shards].write(b"%d\n" % len(raw) + raw)
    return paths


if __name__ == "__main__":  # quick self-check and speed figure
    from wechatpy.crypto import WeChatCrypto

    creds, seq = Creds(), Sequence()
    for scen in SCENARIOS:
        t0 = time.perf_counter()
        items = list(pushes(scen, 20_000, creds, seq))
        dt = time.perf_counter() - t0
        print(f"{scen}: {len(items) / dt:,.0f} pushes/s, {len(items[0].body)} B body")
    p = next(pushes("aes", 1, creds, seq))
    q = dict(kv.split("=", 1) for kv in p.query.split("&"))
    wc = WeChatCrypto(creds.token, creds.encoding_aes_key, creds.app_id)
    print(wc.decrypt_message(p.body.decode(), q["msg_signature"], q["timestamp"], q["nonce"]))
