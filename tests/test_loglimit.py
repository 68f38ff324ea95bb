"""Warnings a flood can set off are bounded a second per reason, the rest counted."""

from __future__ import annotations

import collections
import json
import secrets
import socket
import time

import httpx
import pytest
from structlog.testing import capture_logs

from tests.support import sandbox_process, server_process
from wxhook.server.loglimit import MAX_KEYS, LimitedLog, LimitedRecords
from wxhook.server.logs import get_logger
from wxhook.server.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def suppressed(metrics: Metrics, event: str) -> float:
    value = metrics.registry.get_sample_value("wxhook_log_lines_suppressed_total",
                                              {"event": event})
    return value or 0.0


def test_lines_beyond_the_bound_are_counted_and_summed_up_once():
    clock, metrics = Clock(), Metrics()
    limited = LimitedLog(get_logger("t"), metrics=metrics, per_second=3, clock=clock)
    with capture_logs() as logs:
        for i in range(10):
            limited.warning("signature", "push_refused", n=i)
        limited.warning("timestamp", "push_refused", n=100)  # another reason: its own bound
        clock.now += 0.5                                      # the same second still
        limited.warning("signature", "push_refused", n=10)
    assert [e["n"] for e in logs] == [0, 1, 2, 100]
    assert suppressed(metrics, "push_refused") == 8
    with capture_logs() as logs:
        clock.now += 0.6                                      # the next second
        limited.warning("signature", "push_refused", n=11)
        limited.warning("signature", "push_refused", n=12)
    summary, *lines = logs
    assert summary["event"] == "log_lines_suppressed" and summary["log_level"] == "warning"
    assert summary["suppressed"] == 8 and summary["suppressed_event"] == "push_refused"
    assert summary["key"] == "signature"
    assert [e["n"] for e in lines] == [11, 12]
    with capture_logs() as logs:
        clock.now += 5
        limited.warning("signature", "push_refused", n=13)
    assert [e["event"] for e in logs] == ["push_refused"]     # nothing left out since


async def test_a_flood_of_unsigned_pushes_writes_a_bounded_number_of_lines(make_app,
                                                                           make_push):
    clock, metrics = Clock(), Metrics()
    app = make_app(clock=clock, metrics=metrics)
    push = make_push("text", text="hi")
    params = {**push.params, "signature": "0" * 40}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        with capture_logs() as logs:
            for _ in range(50):
                r = await client.post("/wechat", params=params, content=push.body)
                assert r.status_code == 403
    refused = [e for e in logs if e["event"] == "push_refused"]
    assert len(refused) == 10 and refused[0]["reason"] == "signature"
    assert suppressed(metrics, "push_refused") == 40
    # Every refusal is still counted where alerts look.
    assert metrics.registry.get_sample_value("wxhook_guard_failures_total",
                                             {"account": "default", "reason": "signature"}) == 50


def test_library_records_are_bounded_per_logger_and_message():
    import logging

    clock, metrics = Clock(), Metrics()
    limited = LimitedLog(get_logger("t"), metrics=metrics, per_second=3, clock=clock)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(LimitedRecords(limited))
    lib = logging.getLogger("uvicorn.test-flood")
    lib.addHandler(handler)
    lib.propagate = False
    try:
        with capture_logs() as logs:
            for i in range(20):
                lib.warning("Invalid HTTP request received.")
                lib.warning("Exception from %s", f"client-{i}")  # arguments are not new keys
            clock.now += 1
            lib.warning("Invalid HTTP request received.")
    finally:
        lib.removeHandler(handler)
    assert records.count("Invalid HTTP request received.") == 4
    assert sum(r.startswith("Exception from") for r in records) == 3
    (summary,) = logs
    assert summary["suppressed"] == 17 and summary["suppressed_event"] == "uvicorn.test-flood"
    assert summary["key"] == "uvicorn.test-flood: Invalid HTTP request received."
    assert suppressed(metrics, "uvicorn.test-flood") == 17 + 17


def test_reasons_a_flood_makes_up_share_one_bound_past_the_limit():
    clock, metrics = Clock(), Metrics()
    limited = LimitedLog(get_logger("t"), metrics=metrics, per_second=2, clock=clock)
    with capture_logs() as logs:
        for i in range(MAX_KEYS + 500):
            limited.warning(f"made-up-{i}", "refused")
    assert len(limited._seconds) == MAX_KEYS + 1           # the rest went to "(other)"
    assert len(logs) == MAX_KEYS + 2 and suppressed(metrics, "refused") == 498


# -- against a real server: what reaches uvicorn and the OAuth routes -------------------------

MALFORMED = [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
             b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to the plain port
             b"GET /\x00 HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
UPGRADE = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
           b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
INVALID = "Invalid HTTP request received."
UNSUPPORTED = "Unsupported upgrade request."


def _raw(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the whole request is there: the server answers, closes
        while s.recv(65536):
            pass


def _floods(url, n):
    """Each flood's count of requests, by the line each request makes."""
    port = int(url.rsplit(":", 1)[1])
    sent = collections.Counter()
    for i in range(n):
        _raw(port, MALFORMED[i % len(MALFORMED)])
        sent[INVALID] += 1
    for _ in range(n // 4):
        _raw(port, UPGRADE)
        sent[UNSUPPORTED] += 1
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            state = secrets.token_hex(16)  # random, no cookie: forged or another browser's
            r = client.get("/oauth/callback", params={"state": state, "code": "x"})
            assert r.status_code == 403
            sent["oauth_state_rejected"] += 1
        for _ in range(n // 4):
            assert client.get("/nothing-here").status_code == 404
            assert client.request("DELETE", "/wechat").status_code == 405
    return sent


@pytest.mark.slow
def test_floods_against_a_real_server_write_a_bounded_number_of_lines(tmp_path):
    log = tmp_path / "server.log"
    n = 400
    with sandbox_process() as api, server_process(api, log_path=log) as url:
        began = time.monotonic()
        sent = _floods(url, n)
        seconds = time.monotonic() - began
        time.sleep(1.1)  # a new second: the next line of each reason reports what was left out
        sent += _floods(url, 4)
        metrics = httpx.get(url + "/metrics").text
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    written = collections.Counter(e["event"] for e in lines)
    reported = collections.Counter()
    for e in lines:
        if e["event"] == "log_lines_suppressed":
            reason = e["key"].split(": ", 1)[-1] if e["key"].startswith("uvicorn") \
                else e["suppressed_event"]
            reported[reason] += e["suppressed"]
    for reason in (INVALID, UNSUPPORTED, "oauth_state_rejected"):
        assert written[reason] <= 10 * (int(seconds) + 3), (reason, written[reason], seconds)
        assert reported[reason] > 0, reason  # the flood did go over the bound
        assert written[reason] + reported[reason] == sent[reason], reason
    assert written["No supported WebSocket library detected. Please use \"pip install "
                   "'uvicorn[standard]'\", or install 'websockets' or 'wsproto' manually."] \
        <= 10 * (int(seconds) + 3)
    # 404s and 405s write nothing at all; the counter agrees with the summary lines.
    assert not [e for e in lines if "nothing-here" in json.dumps(e)]
    uvicorn_left_out = sum(e["suppressed"] for e in lines
                           if e["event"] == "log_lines_suppressed"
                           and e["suppressed_event"] == "uvicorn.error")
    assert f'wxhook_log_lines_suppressed_total{{event="uvicorn.error"}} ' \
           f'{float(uvicorn_left_out)}' in metrics
    assert 'wxhook_log_lines_suppressed_total{event="oauth_state_rejected"} ' \
           f'{float(reported["oauth_state_rejected"])}' in metrics


async def test_url_verifications_write_a_bounded_number_of_lines(make_app):
    from tests.support import TOKEN
    from wxhook.server.signature import sign

    clock, metrics = Clock(), Metrics()
    app = make_app(clock=clock, metrics=metrics)
    ts = str(int(time.time()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        with capture_logs() as logs:
            for i in range(50):
                nonce = str(1000 + i)
                r = await client.get("/wechat", params={
                    "signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce,
                    "echostr": "e"})
                assert (r.status_code, r.text) == (200, "e")
    assert [e["event"] for e in logs] == ["url_verified"] * 10
    assert suppressed(metrics, "url_verified") == 40
