"""The open-loop generator: the rate it was asked for, latency counted from when a push was due."""

from __future__ import annotations

import asyncio

from bench.openloop import Load

REPLY = b"<xml>Welcome, Follower-1</xml>"


class Server:
    """A keep-alive HTTP server that answers every request after `each` seconds."""

    def __init__(self, *, each: float, one_at_a_time: bool) -> None:
        self.each, self.one_at_a_time = each, one_at_a_time
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self.lock = asyncio.Lock()
        self.server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        await asyncio.gather(*self.handlers)  # the generator closed its connections

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if self.one_at_a_time:
                    async with self.lock:
                        await asyncio.sleep(self.each)
                else:
                    await asyncio.sleep(self.each)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(REPLY), REPLY))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def requests(n: int) -> list[bytes]:
    return [b"POST /wechat?n=%d HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" % i
            for i in range(n)]


async def test_the_rate_is_kept_and_every_reply_is_counted():
    async with Server(each=0.01, one_at_a_time=False) as port:
        res = await Load("127.0.0.1", port, requests(100), 200, 0.5, b"Welcome").run()
    assert res["completed"] == 100 and sum(res["errors"].values()) == 0
    assert 180 <= res["achieved_rps"] <= 220
    assert res["p50_ms"] >= 10


async def test_a_server_that_falls_behind_shows_in_the_latency_not_in_a_lower_rate():
    # 20 ms a request, one at a time, asked for one every 10 ms: the queue grows by 10 ms a
    # request. A closed loop would send less and report ~20 ms; from the due time the last
    # of 50 waits ~0.5 s.
    async with Server(each=0.02, one_at_a_time=True) as port:
        res = await Load("127.0.0.1", port, requests(50), 100, 0.5, b"Welcome").run()
    assert res["completed"] == 50
    assert res["achieved_rps"] >= 90
    assert res["max_ms"] >= 400


async def test_waiting_for_a_connection_counts_in_the_latency():
    # One connection: requests queue in the generator itself, and that wait is the
    # follower's too (counted from when each was due, not from when it could be sent).
    async with Server(each=0.02, one_at_a_time=False) as port:
        res = await Load("127.0.0.1", port, requests(50), 100, 0.5, b"Welcome",
                         max_connections=1).run()
    assert res["completed"] == 50 and res["connections"] == 1
    assert res["max_ms"] >= 400


async def test_a_wrong_reply_is_an_error_not_a_latency():
    async with Server(each=0.0, one_at_a_time=False) as port:
        res = await Load("127.0.0.1", port, requests(10), 100, 0.1, b"Goodbye").run()
    assert res["completed"] == 0 and res["errors"]["wrong_reply"] == 10
