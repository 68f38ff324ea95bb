"""Prometheus multiprocess files of `wxhook serve --workers N`: a clean start, no dead workers.

Each worker writes its values to files named after its pid. When a worker is gone (died,
or replaced), the supervisor retires its files: its counters, histograms and summaries are
added into one `<type>_retired.db` file per type and its own files removed, so totals never
go backwards and a crash loop does not leave a file per dead pid for every scrape to read;
its gauges are dropped (a dead worker's "ready" or token age means nothing).

A retirement changes two files; a scrape reading between the two would count a worker
twice or not at all, which Prometheus takes for a counter reset. Scrapes hold a shared
lock on the directory, retirements an exclusive one.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import tempfile
from collections.abc import Iterator
from typing import Any

_ADDITIVE = ("counter", "histogram", "summary")  # values that sum across processes
_LOCK = "retire.lock"


def worker_app(app: Any, metrics_dir: str) -> Any:
    """`app` for one worker: removes its own gauges when it shuts down cleanly."""
    return _ForgetGaugesAtShutdown(app, metrics_dir)


class _ForgetGaugesAtShutdown:
    """ASGI wrapper: a worker that shuts down cleanly removes its own gauge files."""

    def __init__(self, app: Any, metrics_dir: str) -> None:
        self.app = app
        self.metrics_dir = metrics_dir

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]

        async def relay(message: Any) -> None:
            # At the end of the app's shutdown, not at interpreter exit: uvicorn's parent may
            # kill a slow worker after that, and live gauges must not keep a dead worker's value.
            if message["type"] == "lifespan.shutdown.complete":
                with _locked(self.metrics_dir, fcntl.LOCK_EX):
                    for path in glob.glob(os.path.join(self.metrics_dir,
                                                       f"gauge_*_{os.getpid()}.db")):
                        os.remove(path)
            await send(message)

        await self.app(scope, receive, relay)
        return None


def retire(metrics_dir: str, pid: int) -> None:
    """A dead worker's files: counts added into the retired totals, gauges dropped."""
    with _locked(metrics_dir, fcntl.LOCK_EX):
        for path in glob.glob(os.path.join(metrics_dir, f"*_{pid}.db")):
            kind = os.path.basename(path).partition("_")[0]
            if kind in _ADDITIVE:
                _add_into(os.path.join(metrics_dir, f"{kind}_retired.db"), path)
            os.remove(path)


def _add_into(totals_path: str, path: str) -> None:
    """Add each value of `path` to the same key's in `totals_path` (the library's format)."""
    from prometheus_client.mmap_dict import MmapedDict

    values: Any = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
    totals: Any = MmapedDict(totals_path)  # type: ignore[no-untyped-call]
    try:
        for key, value, timestamp, _ in values:
            totals.write_value(key, totals.read_value(key)[0] + value, timestamp)
    finally:
        totals.close()


def exposition(metrics_dir: str) -> bytes:
    """Every worker's metrics, live and retired, in Prometheus's text format."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    with _locked(metrics_dir, fcntl.LOCK_SH):
        return generate_latest(registry)


@contextlib.contextmanager
def _locked(metrics_dir: str, how: int) -> Iterator[None]:
    fd = os.open(os.path.join(metrics_dir, _LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_metrics_dir() -> str | None:
    """Parent only, before workers start: a clean multiprocess dir; returns one we made."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        made = tempfile.mkdtemp(prefix="wxhook-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        return made
    # Files left by a previous run would add its counts to this run's totals (and a
    # reused pid would write into them): start from zero, as a restarted process does.
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    return None
