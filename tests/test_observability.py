"""Log output: one whole line a write, the push line as structlog writes it, a broken stdout
never reaches a push."""

import os

import pytest

from wxhook.server.logs import StdoutLogger, mask_openid


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
from wxhook.server.logs import configure_logging, flush_logs, get_logger, log_info
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


# -- control characters never reach an operator's terminal -----------------------------------

# Every C0 control, DEL, every C1 control, the separators and bidi controls that break or
# reorder a line, and escape sequences in their 7-bit and 8-bit forms.
CONTROLS = ([chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
            + ["\u2028", "\u2029", "\u200e", "\u200f"]
            + [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)])
SEQUENCES = [
    "\x1b[31mred\x1b[0m", "\x1b[2J\x1b[H", "\x1b[?1049h", "\x1b[6n",          # CSI
    # OSC: title, clipboard
    "\x1b]0;pwned\x07", "\x1b]2;title\x1b\\", "\x1b]52;c;ZXZpbA==\x07",
    "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",                  # OSC 8 hyperlink
    "\x1bP+q544e\x1b\\", "\x1b_apc\x1b\\", "\x1b^pm\x1b\\", "\x1bX sos\x1b\\",  # DCS, APC, PM, SOS
    # RIS, DECSC, SS2, SS3
    "\x1bc", "\x1b7\x1b8", "\x1bN", "\x1bO", "\x1b(0", "\x1b#8",
    "\x9b31m", "\x9d0;pwned\x9c", "\x90q\x9c", "\x9f\x9c", "\x8e", "\x8f",      # 8-bit forms
    "ok\rforged line", "a\nfake: entry", "x\u2028fake: entry", "\u202egnp.exe", "\u2066x\u2069",
]
PAYLOADS = CONTROLS + SEQUENCES
UNSAFE = set(CONTROLS) - {"\n"}

_LOG_ALL = r"""
import json, logging, sys
from wxhook.server.logs import configure_logging, flush_logs, get_logger, log_info
payloads = json.loads(sys.stdin.read())
configure_logging(level="INFO", fmt=sys.argv[1])
log = get_logger("wxhook.push")
for p in payloads:
    log.warning("push_refused", msg_type=p, nested={"k": [p], p: 1})
    log_info(log, "push", {"msg_type": p, "wx_event": "subscribe" + p, "openid": p + "***"})
    logging.getLogger("uvicorn.error").warning("Invalid %s request", p)
    try:
        raise ValueError(p)
    except ValueError:
        log.exception("push_failed", openid=p)
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application %s", p)
flush_logs()
"""


def _log_all(fmt):
    import json
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _LOG_ALL, fmt], capture_output=True,
                          check=True, timeout=60, input=json.dumps(PAYLOADS).encode()).stdout


def test_json_lines_carry_no_control_and_read_back_the_same():
    import json

    out = _log_all("json")
    text = out.decode("utf-8")
    assert not UNSAFE & set(text), sorted(hex(ord(c)) for c in UNSAFE & set(text))
    lines = [json.loads(line) for line in text.split("\n") if line]
    assert len(lines) == 5 * len(PAYLOADS)  # not one line more: nothing split a line
    pushes = [e for e in lines if e["event"] == "push"]
    refused = [e for e in lines if e["event"] == "push_refused"]
    # Escaped as JSON escapes: a JSON reader gets the very value back.
    assert [e["msg_type"] for e in pushes] == PAYLOADS
    assert [e["msg_type"] for e in refused] == PAYLOADS
    assert [e["nested"]["k"] for e in refused] == [[p] for p in PAYLOADS]
    uvicorn = [e["event"] for e in lines if e.get("logger") == "uvicorn.error"
               and e["event"].startswith("Invalid ")]
    assert uvicorn == [f"Invalid {p} request" for p in PAYLOADS]
    failed = [e for e in lines if e["event"] == "push_failed"]
    assert all(f"ValueError: {p}" in e["exception"] for e, p in zip(failed, PAYLOADS,
                                                                      strict=True))


def test_console_lines_write_every_control_out():
    out = _log_all("console")
    text = out.decode("utf-8")
    assert not UNSAFE & set(text), sorted(hex(ord(c)) for c in UNSAFE & set(text))
    for p in PAYLOADS:
        shown = "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                        if c in UNSAFE or c == "\n" else c for c in p)
        # Written as is, or quoted by the console renderer (which doubles the backslash).
        assert f"msg_type={shown} " in text or f"msg_type={shown!r}" in text, repr(p)
        assert f"Invalid {shown} request" in text, repr(p)
    # A newline from the network never starts a line of its own (a traceback's lines do).
    assert not [line for line in text.split("\n") if line.startswith(("fake: entry",
                                                                       "forged line"))]


# What a push can carry in XML 1.0 (C0 but tab, newline and carriage return cannot be in it).
IN_XML = [c for c in CONTROLS if c in "\t\n\r" or ord(c) >= 0x7F] + [
    "\x9b31m", "\x9d0;pwned\x9c", "\x90q\x9c", "\x9b2J\x9bH", "ok\rforged line",
    "a\nfake: entry", "x\u2028fake: entry", "\u202egnp.exe", "\u2066x\u2069"]


def _pushes_with_controls(url, log=None):
    import httpx

    from tests.support import TOKEN
    from wxhook.tools.simulate import sign_push

    for i, p in enumerate(IN_XML):
        openid = f"{p}oCtl{i:020d}{p}"
        xml = (f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
               f"</FromUserName><CreateTime>{1700000000 + i}</CreateTime><MsgType><![CDATA["
               f"{'event' if i % 2 else 'text' + p}]]></MsgType><Event><![CDATA[{p}]]></Event>"
               f"<Content><![CDATA[hi]]></Content><MsgId>{i + 1}</MsgId></xml>").encode()
        push = sign_push(xml, token=TOKEN, openid="o")
        try:
            r = httpx.post(url + "/wechat", params=push.params, content=xml, timeout=10)
        except httpx.ConnectError:  # the server is gone: what it wrote says why
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"push {i} ({p!r}): server unreachable\n{tail}") from None
        assert r.status_code == 200, (p, r.text)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_push_carrying_controls_reaches_the_log_written_out(tmp_path, fmt):
    import json

    from tests.support import sandbox_process, server_process

    log = tmp_path / "server.log"
    with sandbox_process() as api, server_process(api, log_path=log, WXHOOK_LOG_FORMAT=fmt) as url:
        _pushes_with_controls(url, log)
    text = log.read_bytes().decode("utf-8")
    assert not UNSAFE & set(text), sorted(hex(ord(c)) for c in UNSAFE & set(text))
    assert not [line for line in text.split("\n") if line.startswith(("fake: entry",
                                                                       "forged line"))]
    if fmt == "json":
        pushes = [e for e in map(json.loads, text.splitlines()) if e["event"] == "push"]
        sent = [p.replace("\r", "\n") for p in IN_XML[1::2]]  # XML's line-end normalisation
        assert [e["wx_event"] for e in pushes if e["msg_type"] == "event"] == sent
    else:
        assert text.count(" push ") >= len(IN_XML) and "\\x9b31m" in text
