"""`wxhook serve --workers N`: uvicorn's supervisor, with SIGHUP passed on to every worker.

uvicorn's own answer to SIGHUP is to replace every worker; each then starts afresh and a
rules file broken at that moment would stop it from starting. Passed on instead, SIGHUP
makes each worker reload its rules in place, keeping the last good ones on a bad file.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess


class _Supervisor(Multiprocess):
    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)


def serve(app: str, **options: Any) -> None:
    """uvicorn.run(app, **options), with SIGHUP passed on when there are several workers."""
    config = uvicorn.Config(app, **options)
    if config.workers <= 1:
        uvicorn.run(app, **options)
        return
    _Supervisor(config, sockets=[config.bind_socket()]).run()
