"""JSON logs (structlog), Prometheus metrics, request ids, masking (pipeline step 8)."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import select
import stat
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Upstream calls made on behalf of the current push, for its log line: (api, errcode).
upstream_trace: ContextVar[list[tuple[str, int | None]] | None] = ContextVar(
    "upstream_trace", default=None
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 4.5, 5, 10)


def mask_openid(openid: str) -> str:
    """Enough of an openid to correlate log lines, not enough to identify a follower."""
    if len(openid) <= 8:
        return "***"
    return f"{openid[:4]}***{openid[-4:]}"


FLUSH_INTERVAL = 0.1  # seconds an info line may wait in the buffer
_FILE_WRITE = 1 << 16  # bytes a write when stdout is a regular file


class LineBuffer:
    """Log lines to a file descriptor in batches: one write per FLUSH_INTERVAL, not per line.

    A write per push costs a system call (13% of a push on the benchmark); batching bounds
    how late a line can be instead. Warnings and errors flush at once; shutdown and exit
    flush what is left.
    """

    def __init__(self, fd: int, *, interval: float = FLUSH_INTERVAL) -> None:
        # Writes of whole lines: workers sharing one pipe (journald, docker) never
        # interleave a line if each write is at most PIPE_BUF bytes. A regular file takes
        # any write whole (Linux serialises writes and offset updates on a file), and a
        # write to disk costs more than one to a pipe: 64 KiB there.
        size = _FILE_WRITE if stat.S_ISREG(os.fstat(fd).st_mode) else select.PIPE_BUF
        self.write_size = size
        self._out = open(fd, "wb", buffering=size, closefd=False)  # noqa: SIM115
        self.interval = interval
        self._scheduled: asyncio.AbstractEventLoop | None = None  # loop a flush is due on
        self.dropped = 0
        atexit.register(self.flush)

    def write(self, line: bytes, *, urgent: bool) -> None:
        """Buffer one line; flush now when urgent, else within the interval."""
        try:
            self._out.write(line + b"\n")
        except (OSError, ValueError):  # stdout gone (a restarted journald): never the push's
            self.dropped += 1          # problem; the line is lost and counted
            return
        if urgent:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (CLI, start-up): nothing would come back
            self.flush()
            return
        if self._scheduled is not loop:  # (a flush scheduled on a loop since closed is void)
            loop.call_later(self.interval, self.flush)
            self._scheduled = loop

    def close(self) -> None:
        """Flush and let go of the descriptor (no flush at exit into a reused one)."""
        self.flush()
        atexit.unregister(self.flush)
        try:
            self._out.close()
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        """Write out everything buffered."""
        self._scheduled = None
        try:
            self._out.flush()
        except (OSError, ValueError):
            pass  # stdout closed under us at exit: nothing left to tell


class BufferedLogger:
    """structlog's output end for LineBuffer: info and debug batched, the rest at once."""

    def __init__(self, buffer: LineBuffer) -> None:
        self._buffer = buffer

    def msg(self, message: bytes) -> None:
        """An info or debug line."""
        self._buffer.write(message, urgent=False)

    def urgent(self, message: bytes) -> None:
        """A warning or worse: written before anything else happens."""
        self._buffer.write(message, urgent=True)

    debug = info = msg
    warning = warn = error = err = exception = critical = fatal = failure = urgent


_buffer: LineBuffer | None = None


class IsoTimeStamper:
    """structlog's TimeStamper(fmt="iso", utc=True), formatting the date once a second.

    Its datetime.now().isoformat() per line was 4% of a push; lines within one second share
    everything up to the microseconds. Those are always six digits (isoformat drops them
    when they are zero), so every timestamp has the same width.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def flush_logs() -> None:
    """Write out buffered log lines (shutdown calls this)."""
    if _buffer is not None:
        _buffer.flush()


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging (uvicorn's too) through one format."""
    text_renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamper = IsoTimeStamper()
    shared: list[Any] = [structlog.processors.add_log_level, stamper]
    # Every push writes a line: orjson into a LineBuffer is ~3 us cheaper a line than json
    # to a text stream, and batches the writes.
    global _buffer
    try:
        fd: int | None = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # a stream without a descriptor (test capture): plain text writes
    if fmt == "json" and fd is not None:
        flush_logs()
        _buffer = _buffer if _buffer is not None else LineBuffer(fd)
        renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger = BufferedLogger(_buffer)
        factory: Any = lambda *_: logger
    else:
        renderer, factory = text_renderer, structlog.WriteLoggerFactory(file=sys.stdout)
    processors = [*shared, structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    global _direct
    _direct = (_DirectInfo(processors, stamper, renderer, _buffer)
               if _buffer is not None and fmt == "json" and fd is not None
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


class _DirectInfo:
    """The chain configure_logging() built, for info lines that need none of its generality."""

    __slots__ = ("buffer", "processors", "renderer", "stamper")

    def __init__(self, processors: list[Any], stamper: Any, renderer: Any,
                 buffer: LineBuffer) -> None:
        self.processors, self.stamper, self.renderer = processors, stamper, renderer
        self.buffer = buffer


_direct: _DirectInfo | None = None


def log_info(log: Any, event: str, fields: dict[str, Any]) -> None:
    """log.info(event, **fields), the same JSON line; `fields` is used up.

    Every push writes one info line: through structlog's generic processor chain it cost
    ~5 us, a tenth of a plaintext push, where its two steps that matter (timestamp, orjson)
    take ~1 us. Those steps run here directly only while structlog still has the chain
    configure_logging() built (JSON into the LineBuffer, INFO enabled); with anything else
    (the console format, a test capturing logs) the line goes through structlog.
    """
    d = _direct
    procs = structlog.get_config()["processors"]
    if d is None or procs is not d.processors or procs[-1] is not d.renderer:
        log.info(event, **fields)
        return
    fields["event"] = event
    fields["level"] = "info"
    d.buffer.write(d.renderer(None, "info", d.stamper(None, "info", fields)), urgent=False)


def get_logger(name: str = "wxhook") -> Any:
    """A structlog logger bound to a component name."""
    return structlog.get_logger(name)


class Metrics:
    """Every Prometheus metric wxhook exports, on one registry (per app, so tests isolate)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in mmap files; the registry only names them.
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pushes = Counter("wxhook_pushes", "Pushes answered, by type, event and outcome",
                              ["msg_type", "event", "outcome"], registry=r)
        self.push_latency = Histogram("wxhook_push_latency_seconds", "Time to answer a push",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_calls = Counter("wxhook_upstream_calls", "WeChat API calls by api and errcode",
                                      ["api", "errcode"], registry=r)
        self.upstream_latency = Histogram("wxhook_upstream_latency_seconds",
                                          "WeChat API call latency", ["api"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.token_refreshes = Counter("wxhook_token_refreshes", "Access token fetches",
                                       ["reason", "result"], registry=r)
        self.token_age = Gauge("wxhook_token_age_seconds", "Age of the access token last used",
                               registry=r, multiprocess_mode="max")
        self.dedup_hits = Counter("wxhook_dedup_hits", "Retried pushes answered from the first try",
                                  registry=r)
        self.deadline_fallbacks = Counter("wxhook_deadline_fallbacks",
                                          "Pushes answered 'success' at the deadline", registry=r)
        self.late_deliveries = Counter("wxhook_late_deliveries",
                                       "Replies delivered through custom/send after the deadline",
                                       ["result"], registry=r)
        self.guard_failures = Counter("wxhook_guard_failures", "Pushes refused by the guard",
                                      ["reason"], registry=r)
        self.circuit_open = Gauge("wxhook_circuit_open", "1 while calls to an API are suspended",
                                  ["api"], registry=r, multiprocess_mode="max")
        self.store_fallbacks = Counter("wxhook_store_fallbacks",
                                       "Operations served locally because Redis was unreachable",
                                       registry=r)
        self.ready = Gauge("wxhook_ready", "1 when /readyz last answered ready", registry=r,
                           multiprocess_mode="min")
        self.rules_reloads = Counter("wxhook_rules_reloads", "Rules file reloads, by result "
                                     "(failed: the file was refused, the old rules stay)",
                                     ["result"], registry=r)
        self.follow_ups = Counter("wxhook_follow_ups", "reply_all replies after the first, "
                                  "sent by customer-service message", ["result"], registry=r)
        self.multiprocess = multiproc
