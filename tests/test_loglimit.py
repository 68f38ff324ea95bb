"""Warnings a flood can set off are bounded a second per reason, the rest counted."""

from __future__ import annotations

import httpx
from structlog.testing import capture_logs

from service.loglimit import LimitedLog
from service.logs import get_logger
from service.metrics import Metrics


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
                                             {"reason": "signature"}) == 50
