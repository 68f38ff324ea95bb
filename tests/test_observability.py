"""Log output: batched info lines, immediate warnings, a broken stdout never reaches a push."""

import asyncio
import os
from datetime import UTC, datetime

import structlog

from service.observability import IsoTimeStamper, LineBuffer, mask_openid


def _pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def _read(fd):
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


async def test_info_lines_are_batched_and_flushed_within_the_interval():
    r, w = _pipe()
    buf = LineBuffer(w, interval=0.05)
    buf.write(b'{"event":"push"}', urgent=False)
    buf.write(b'{"event":"push"}', urgent=False)
    assert _read(r) == b""                      # batched
    await asyncio.sleep(0.1)
    assert _read(r) == b'{"event":"push"}\n' * 2  # and out within the interval
    buf.close()
    os.close(r)
    os.close(w)


async def test_warnings_go_out_at_once_after_what_was_buffered():
    r, w = _pipe()
    buf = LineBuffer(w, interval=10)
    buf.write(b"a", urgent=False)
    buf.write(b"b", urgent=True)
    assert _read(r) == b"a\nb\n"
    buf.close()
    os.close(r)
    os.close(w)


def test_without_a_loop_lines_are_written_at_once():
    r, w = _pipe()
    buf = LineBuffer(w)
    buf.write(b"cli", urgent=False)
    assert _read(r) == b"cli\n"
    buf.close()
    os.close(r)
    os.close(w)


async def test_a_broken_stdout_is_counted_not_raised():
    r, w = _pipe()
    os.close(r)
    buf = LineBuffer(w, interval=10)
    for _ in range(200):  # more than the buffer holds: writes hit the closed pipe
        buf.write(b"x" * 100, urgent=False)
    buf.write(b"warn", urgent=True)
    assert buf.dropped > 0
    buf.close()
    os.close(w)


def test_openids_are_masked():
    assert mask_openid("oSandboxDemoFollower00000001") == "oSan***0001"
    assert mask_openid("short") == "***"


def test_iso_timestamps_match_structlogs_format():
    clock = iter([1700000000.5, 1700000000.25, 1700000001.0, 1763773200.999999]).__next__
    stamp = IsoTimeStamper(clock)
    assert [stamp(None, "info", {})["timestamp"] for _ in range(4)] == [
        "2023-11-14T22:13:20.500000Z", "2023-11-14T22:13:20.250000Z",
        "2023-11-14T22:13:21.000000Z", "2025-11-22T01:00:00.999999Z"]
    ours = IsoTimeStamper()(None, "info", {})["timestamp"]
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert len(ours) == len(theirs) and ours.endswith("Z") and theirs.endswith("Z")
    parsed = [datetime.fromisoformat(t) for t in (ours, theirs)]
    assert parsed[0].tzinfo == UTC and abs((parsed[1] - parsed[0]).total_seconds()) < 1


_SAME_LINE_TWICE = r"""
import structlog
from service.observability import configure_logging, flush_logs, get_logger, log_info
configure_logging(level="INFO", fmt="json")
log = get_logger("wxhook")
fields = {"request_id": "r-1", "handler": None, "openid": "oABC***WXYZ", "latency_ms": 0.5,
          "upstream": ["user/info:0"], "name": "刺猬 \"q\"", "odd": {1, 2}}
log.info("push", **fields)
log_info(log, "push", dict(fields))
with structlog.testing.capture_logs() as captured:
    log_info(log, "push", dict(fields))
assert captured == [{**fields, "event": "push", "log_level": "info"}], captured
configure_logging(level="WARNING", fmt="json")
log_info(get_logger("wxhook"), "push", dict(fields))  # below the level: no line
flush_logs()
"""


def test_the_direct_push_line_is_the_line_structlog_writes():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SAME_LINE_TWICE], capture_output=True,
                         check=True, timeout=60).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2, out
    theirs, ours = lines
    assert list(ours) == list(theirs) and ours["event"] == "push" and ours["level"] == "info"
    assert ours["odd"] == theirs["odd"]  # what JSON cannot hold is rendered the same way
    assert {k: v for k, v in ours.items() if k != "timestamp"} == \
        {k: v for k, v in theirs.items() if k != "timestamp"}


def test_writes_are_pipe_sized_for_pipes_and_larger_for_files(tmp_path):
    import select

    r, w = _pipe()
    assert LineBuffer(w).write_size == select.PIPE_BUF  # workers share journald's pipe
    os.close(r)
    os.close(w)
    path = tmp_path / "out.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    buf = LineBuffer(fd)
    assert buf.write_size > select.PIPE_BUF
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 300) for i in range(1000)]
    for line in lines:
        buf.write(line, urgent=False)
    buf.close()
    os.close(fd)
    assert path.read_bytes().splitlines() == lines
