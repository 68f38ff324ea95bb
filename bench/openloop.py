"""Open-loop load: pushes sent at a fixed arrival rate, whatever the server's answers do.

    .venv/bin/python bench/openloop.py --port 18903 --pool POOL --rate 3000 --seconds 20

wrk is closed-loop: a connection sends its next request when the last one is answered, so
a slow server is sent less and its latency hides in a lower rate. WeChat does not wait:
followers arrive at their own rate. This sends request i at t0 + i / rate on a free
keep-alive connection (a new one when none is free), and measures each latency from the
time the request was due, not from when it could be sent, so a generator or a server that
falls behind shows up in the figures instead of thinning the load.

Requests come from a pool file written by bench/gen.py (length-prefixed raw requests, each
distinct and signed), read whole before the clock starts. Prints one line:
OPENJSON {...} with the target and achieved rate, how late the generator sent (its own
lag: if that is high, the generator and not the server set the pace), completions, errors,
and p50/p90/p99/max latency in ms. Runs on uvloop with raw sockets: ~25 us of CPU a request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

TIMEOUT = 5.0  # WeChat gives up after 5 s: a slower reply is a failed reply
MAX_CONNECTIONS = 4096


def read_pool(path: str) -> list[bytes]:
    """The raw requests of one pool file ("<len>\\n<bytes>" each)."""
    data = Path(path).read_bytes()  # read at once (and closed), before the clock starts
    out, i = [], 0
    while i < len(data):
        nl = data.index(b"\n", i)
        n = int(data[i:nl])
        out.append(data[nl + 1:nl + 1 + n])
        i = nl + 1 + n
    return out


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, answers by Content-Length."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.due = 0.0  # when the request in flight was due; 0.0: idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, raw: bytes, due: float) -> None:
        self.due = due
        assert self.transport is not None
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        due, self.due = self.due, 0.0
        self.load.answered(self, due, status, body, closing=b"connection: close" in head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class Load:
    """The schedule, the connection pool and the figures of one open-loop run."""

    def __init__(self, host: str, port: int, pool: list[bytes], rate: float, seconds: float,
                 expect: bytes, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.pool, self.rate, self.seconds = pool, rate, seconds
        self.expect = expect  # bytes every good answer contains
        self.idle: deque[Conn] = deque()
        self.busy: set[Conn] = set()
        self.opening = 0
        self.waiting: deque[tuple[bytes, float]] = deque()  # due, no connection yet
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors = {"status": 0, "wrong_reply": 0, "timeout": 0, "connection": 0}
        self.total: int | None = None  # requests of the run, once all are sent
        self.done = asyncio.Event()

    async def run(self) -> dict[str, Any]:
        # time.monotonic(), not loop.time(): uvloop's clock has millisecond steps.
        clock = time.monotonic
        n = min(len(self.pool), int(self.rate * self.seconds))
        t0 = clock() + 0.05
        i = 0
        while i < n:
            now = clock()
            due_count = min(n, int((now - t0) * self.rate) + 1) if now >= t0 else 0
            while i < due_count:
                due = t0 + i / self.rate
                self.lags.append(now - due)
                self.submit(self.pool[i], due)
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, t0 + i / self.rate - clock()))
        send_seconds = clock() - t0
        self.total = n
        self.check_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), TIMEOUT + 1)
        now = clock()
        for conn in list(self.busy):  # still unanswered after the timeout
            if now - conn.due >= TIMEOUT:
                self.errors["timeout"] += 1
        self.errors["timeout"] += len(self.waiting)
        res = self.figures(n, send_seconds)
        for conn in [*self.idle, *self.busy]:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let the transports finish closing
        return res

    def submit(self, raw: bytes, due: float) -> None:
        if self.idle:
            conn = self.idle.popleft()
            self.busy.add(conn)
            conn.send(raw, due)
            return
        self.waiting.append((raw, due))
        if self.opening + len(self.busy) < self.max_connections:
            self.opening += 1
            asyncio.get_running_loop().create_task(self.open())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.waiting:
                self.waiting.popleft()
                self.errors["connection"] += 1
                self.check_done()
            return
        self.opening -= 1
        self.release(conn)

    def release(self, conn: Conn) -> None:
        if self.waiting:
            raw, due = self.waiting.popleft()
            self.busy.add(conn)
            conn.send(raw, due)
        else:
            self.busy.discard(conn)
            self.idle.append(conn)

    def answered(self, conn: Conn, due: float, status: int, body: bytes, *,
                 closing: bool) -> None:
        took = time.monotonic() - due
        if status != 200:
            self.errors["status"] += 1
        elif self.expect not in body:
            self.errors["wrong_reply"] += 1
        elif took >= TIMEOUT:
            self.errors["timeout"] += 1
        else:
            self.latencies.append(took)
        if closing:
            self.busy.discard(conn)
        else:
            self.release(conn)
        self.check_done()

    def lost(self, conn: Conn) -> None:
        if conn.due:
            self.errors["connection"] += 1
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.check_done()

    def check_done(self) -> None:
        finished = len(self.latencies) + sum(self.errors.values())
        if self.total is not None and finished >= self.total:
            self.done.set()

    def figures(self, n: int, send_seconds: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        lags = sorted(self.lags)

        def pct(xs: list[float], p: float) -> float | None:
            return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2) if xs else None

        return {
            "target_rps": self.rate, "requests": n,
            "achieved_rps": round(n / send_seconds, 1) if send_seconds > 0 else None,
            "send_lag_p99_ms": pct(lags, 0.99), "send_lag_max_ms": pct(lags, 1.0),
            "completed": len(lat), "errors": dict(self.errors),
            "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99),
            "max_ms": pct(lat, 1.0),
            "connections": len(self.idle) + len(self.busy),
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pool", required=True, help="a pool file written by bench/gen.py")
    p.add_argument("--rate", type=float, required=True, help="requests a second")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--expect", default="<xml>", help="text every good reply contains")
    a = p.parse_args()
    pool = read_pool(a.pool)
    if len(pool) < a.rate * a.seconds:
        print(f"pool holds {len(pool)} requests, {a.rate * a.seconds:.0f} needed", file=sys.stderr)
        return 2
    import uvloop

    started = time.process_time()
    res = uvloop.run(Load(a.host, a.port, pool, a.rate, a.seconds, a.expect.encode()).run())
    res["generator_cpu_s"] = round(time.process_time() - started, 2)
    print("OPENJSON " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
