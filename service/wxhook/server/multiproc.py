"""Prometheus multiprocess files of `wxhook serve --workers N`: a clean start, no dead gauges."""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Any


def worker_app(app: Any, metrics_dir: str) -> Any:
    """`app` for one worker: clears what dead workers left, removes its own gauges at exit."""
    # uvicorn restarts a worker that died (even by SIGKILL); the new one clears the gauges
    # the dead ones left, so a dead worker's "ready 0" or stale token age does not linger.
    for pid in _dead_pids(metrics_dir):
        _forget_gauges(metrics_dir, pid)
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
                _forget_gauges(self.metrics_dir, os.getpid())
            await send(message)

        await self.app(scope, receive, relay)
        return None


def _forget_gauges(metrics_dir: str, pid: int) -> None:
    """Drop a dead process's gauges; its counters and histograms stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
    # Ours are max/min gauges, which mark_process_dead keeps: a dead worker's value of
    # wxhook_ready, token age or circuit state means nothing, so drop those files too.
    for path in glob.glob(os.path.join(metrics_dir, f"gauge_*_{pid}.db")):
        os.remove(path)


def _dead_pids(metrics_dir: str) -> set[int]:
    pids: set[int] = set()
    for path in glob.glob(os.path.join(metrics_dir, "*.db")):
        tail = os.path.basename(path)[:-3].rpartition("_")[2]
        if tail.isdigit() and not _alive(int(tail)):
            pids.add(int(tail))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


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
