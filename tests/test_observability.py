"""Log output: one whole line a write, the push line as structlog writes it, a broken stdout
never reaches a push."""

import os

from service.logs import StdoutLogger, mask_openid


def _pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def _read(fd):
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def test_every_line_goes_out_whole_at_once():
    r, w = _pipe()
    with os.fdopen(w, "wb", buffering=0) as out:
        logger = StdoutLogger(out)
        logger.info(b'{"event":"push"}')
        assert _read(r) == b'{"event":"push"}\n'   # no line waits in a buffer
        logger.warning(b'{"event":"slow"}')
        assert _read(r) == b'{"event":"slow"}\n'
    os.close(r)


def test_a_line_leaves_a_buffered_stdout_at_once():
    r, w = _pipe()
    with os.fdopen(w, "wb") as out:  # buffered, as stdout is without PYTHONUNBUFFERED
        StdoutLogger(out).info(b'{"event":"push"}')
        assert _read(r) == b'{"event":"push"}\n'
    os.close(r)


def test_a_broken_stdout_is_counted_not_raised():
    r, w = _pipe()
    os.close(r)
    before = StdoutLogger.dropped
    with os.fdopen(w, "wb", buffering=0) as out:
        logger = StdoutLogger(out)
        logger.info(b"x" * 100)
        logger.error(b"warn")
    assert StdoutLogger.dropped == before + 2


def test_openids_are_masked():
    assert mask_openid("oSandboxDemoFollower00000001") == "oSan***0001"
    assert mask_openid("short") == "***"


_SAME_LINE_TWICE = r"""
import structlog
from service.logs import configure_logging, flush_logs, get_logger, log_info
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
