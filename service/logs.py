"""JSON logs through structlog, one line per push, with openids masked (pipeline step 8)."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

# Upstream calls made on behalf of the current push, for its log line: (api, errcode).
upstream_trace: ContextVar[list[tuple[str, int | None]] | None] = ContextVar(
    "upstream_trace", default=None
)


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
        # One write call a line, without BytesLogger's lock: the file object serialises
        # its own writes, and every push writes a line (the lock: 0.6% of its instructions).
        try:
            self._write(message + b"\n")
            self._flush()
        except (OSError, ValueError):
            type(self).dropped += 1

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging (uvicorn's too) through one format."""
    text_renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [structlog.processors.add_log_level, stamper]
    out = getattr(sys.stdout, "buffer", None)
    if fmt == "json" and out is not None:
        # orjson straight to bytes: every push writes a line.
        renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: Any = lambda *_: StdoutLogger(out)
    else:  # the console format, or a stream without bytes (a test's capture)
        renderer, factory = text_renderer, structlog.WriteLoggerFactory(file=sys.stdout)
    processors = [*shared, structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    global _direct
    _direct = (_DirectInfo(processors, stamper, renderer, factory())
               if fmt == "json" and out is not None
               and logging.getLevelName(level) <= logging.INFO else None)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
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
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # stdout closed under us at exit: nothing left to tell


class _DirectInfo:
    """The chain configure_logging() built, for info lines that need none of its generality."""

    __slots__ = ("logger", "processors", "renderer", "stamper")

    def __init__(self, processors: list[Any], stamper: Any, renderer: Any, logger: Any) -> None:
        self.processors, self.stamper, self.renderer = processors, stamper, renderer
        self.logger = logger


_direct: _DirectInfo | None = None


def log_info(log: Any, event: str, fields: dict[str, Any]) -> None:
    """log.info(event, **fields), the same JSON line; `fields` is used up.

    Every push writes one info line: through structlog's bound logger and generic processor
    chain it cost 8-10% more CPU a push (bench/inproc.py) than its two steps that matter, the
    timestamp and orjson, run here directly. They run here only while structlog still has
    the chain configure_logging() built (JSON bytes, INFO enabled); with anything else (the
    console format, a test capturing logs) the line goes through structlog.
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
