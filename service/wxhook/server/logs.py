"""JSON logs through structlog, one line per push, with openids masked (pipeline step 8).

Fields come from the network (a push's MsgType, Event and FromUserName, a forwarded client
address, uvicorn's request errors) and an operator reads the log on a terminal: a control
character there moves the cursor, rewrites the line, sets the window title or the
clipboard. None reaches the output as itself: JSON escapes each one as \\u00XX (what a JSON
reader gets back is unchanged), the console format writes it as \\x1b or \\u202e.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import traceback
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

# Upstream calls made on behalf of the current push, for its log line: (api, errcode).
upstream_trace: ContextVar[list[tuple[str, int | None]] | None] = ContextVar(
    "upstream_trace", default=None
)


# C0 and DEL, C1 (an 8-bit CSI is one character, \x9b), line and paragraph separators, and
# the bidirectional overrides and isolates that reorder what a terminal shows.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE_TEXT = re.compile(f"[{_UNSAFE}]")
_UNSAFE_UTF8 = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]"
                          rb"|\xe2\x81[\xa6-\xa9]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: Any, *, keep: str = "") -> Any:
    """`value` with every control character written out (\\x1b), strings in lists and dicts
    too; characters in `keep` stay."""
    if isinstance(value, str):
        if value.isprintable():  # the usual case, in C: nothing to do
            return value
        return _UNSAFE_TEXT.sub(lambda m: m.group() if m.group() in keep else _shown(m), value)
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    return value


def _traceback_text(exc_info: Any) -> str:
    """A traceback whose exception messages cannot start a line of their own."""
    top = traceback.TracebackException(*exc_info)
    quoted: set[str] = set()
    todo = [top]
    while todo:  # the chain (cause, context, a group's members) is finite: no cycles
        te = todo.pop()
        quoted.update(te.format_exception_only())
        todo += [x for x in (te.__cause__, te.__context__) if x is not None]
        todo += te.exceptions or []
    text = "".join(printable(part[:-1]) + "\n" if part in quoted else part
                   for part in top.format())
    return text.removesuffix("\n")


def printable_fields(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor for the console format: controls written out before rendering."""
    for key, value in event_dict.items():
        # A traceback is lines; what it quotes (an exception's message) is not trusted.
        event_dict[key] = printable(value, keep="\n" if key == "exception" else "")
    return event_dict


class SafeJSON:
    """A JSON renderer whose lines carry no character a terminal acts on.

    JSON itself escapes C0; DEL, C1, the line separators and bidi controls it may write
    as they are. Those become \\u escapes, which JSON readers decode to the same text.
    """

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        """The rendered line, bytes or str as the wrapped renderer gives it."""
        line = self.renderer(logger, method, event_dict)
        if isinstance(line, bytes):
            # A push's line is ASCII (JSON has escaped its C0): two scans in C, no regex.
            if (line.isascii() and b"\x7f" not in line) or _UNSAFE_UTF8.search(line) is None:
                return line
            return _UNSAFE_UTF8.sub(
                lambda m: f"\\u{ord(m.group().decode()):04x}".encode(), line)
        return _UNSAFE_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def mask_openid(openid: str) -> str:
    """Enough of an openid to correlate log lines, not enough to identify a follower."""
    if len(openid) <= 8:
        return "***"
    return f"{openid[:4]}***{openid[-4:]}"


class StdoutLogger(structlog.BytesLogger):
    """structlog's BytesLogger (a write of one whole line each), that never fails a push.

    A stdout gone (a restarted journald, a closed pipe) loses the line and counts it.
    """

    dropped = 0

    def msg(self, message: bytes) -> None:
        """Write one line."""
        try:
            super().msg(message)
        except (OSError, ValueError):
            type(self).dropped += 1

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging (uvicorn's too) through one format."""
    # Controls from the network are escaped before any renderer writes them (see above).
    escape: list[Any] = ([structlog.processors.format_exc_info] if fmt == "json" else
                         [structlog.processors.ExceptionRenderer(_traceback_text),
                          printable_fields])
    text_renderer: Any = (
        SafeJSON(structlog.processors.JSONRenderer(ensure_ascii=False))
        if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [structlog.processors.add_log_level, stamper]
    out = getattr(sys.stdout, "buffer", None)
    if fmt == "json" and out is not None:
        # orjson straight to bytes: every push writes a line.
        renderer: Any = SafeJSON(structlog.processors.JSONRenderer(serializer=orjson.dumps))

        def stdout_logger(*_: Any) -> StdoutLogger:
            return StdoutLogger(out)
        factory: Any = stdout_logger
    else:  # the console format, or a stream without bytes (a test's capture)
        renderer, factory = text_renderer, structlog.WriteLoggerFactory(file=sys.stdout)
    processors = [*shared, *escape, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    global _direct  # noqa: PLW0603 - logging is configured once per process, as structlog
    _direct = (_DirectInfo(processors, stamper, renderer, factory())
               if fmt == "json" and out is not None
               and logging.getLevelName(level) <= logging.INFO else None)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *escape,
                    text_renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # No access log: every push already has its own line, and uvicorn formats an access
    # record whenever this logger has a handler (a stdlib LogRecord per request).
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    # httpx logs every request URL at INFO, and those URLs carry access_token and secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def flush_logs() -> None:
    """Write out whatever stdout still holds (shutdown calls this)."""
    with contextlib.suppress(OSError, ValueError):  # stdout closed under us at exit
        sys.stdout.flush()


class _DirectInfo:
    """The chain configure_logging() built, for info lines that need none of its generality."""

    __slots__ = ("logger", "processors", "renderer", "stamper")

    def __init__(self, processors: list[Any], stamper: Any, renderer: Any, logger: Any) -> None:
        self.processors, self.stamper, self.renderer = processors, stamper, renderer
        self.logger = logger


_direct: _DirectInfo | None = None


def log_info(log: Any, event: str, fields: dict[str, Any]) -> None:
    """log.info(event, **fields), the same JSON line; `fields` is used up.

    Every push writes one info line, so its two steps that matter, the timestamp and orjson,
    run here directly rather than through structlog's bound logger and generic processor
    chain (bench/README.md, "Hand-written structures"). They run here only while structlog
    still has the chain configure_logging() built (JSON bytes, INFO enabled); with anything
    else (the console format, a test capturing logs) the line goes through structlog.
    """
    d = _direct
    procs = structlog.get_config()["processors"]
    if d is None or procs is not d.processors or procs[-1] is not d.renderer:
        log.info(event, **fields)
        return
    fields["event"] = event
    fields["level"] = "info"
    d.logger.info(d.renderer(None, "info", d.stamper(None, "info", fields)))


def get_logger(name: str = "wxhook") -> Any:
    """A structlog logger bound to a component name."""
    return structlog.get_logger(name)
