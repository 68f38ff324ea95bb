"""service/supervisor.py leans on uvicorn's Multiprocess internals: they must still be there."""

import signal
import subprocess
import sys

import uvicorn
from uvicorn.supervisors import multiprocess

from wxhook.server.supervisor import _Supervisor


def test_sighup_reaches_every_worker_through_uvicorns_own_dispatch():
    # What the subclass needs from uvicorn (pyproject pins the versions that have it): a
    # constructor taking (config, sockets), a `processes` list whose items have `pid`, and
    # SIGHUP queued in `signal_queue` and dispatched by name to `handle_hup`.
    saved = {sig: signal.getsignal(sig) for sig in multiprocess.SIGNALS}
    worker = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGHUP, lambda *_: sys.exit(7))\n"
         "print('ready', flush=True)\ntime.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "ready\n"
        supervisor = _Supervisor(uvicorn.Config("wxhook.server.app:app", workers=2), sockets=[])
        assert isinstance(multiprocess.Process.pid, property)
        supervisor.processes.append(worker)  # has `pid`, as uvicorn's Process does
        supervisor.signal_queue.append(signal.SIGHUP)
        supervisor.handle_signals()
        assert worker.wait(timeout=10) == 7  # passed on, not a restart of the workers
    finally:
        worker.kill()
        worker.wait()
        worker.stdout.close()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
