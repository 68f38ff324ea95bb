"""`wxhook serve --workers N`: uvicorn's supervisor, with SIGHUP passed on to every worker.

uvicorn's own answer to SIGHUP is to replace every worker; each then starts afresh and a
rules file broken at that moment would stop it from starting. Passed on instead, SIGHUP
makes each worker reload its rules in place, keeping the last good ones on a bad file.

At SIGTERM or SIGINT the supervisor closes its own copy of the listening socket at once.
uvicorn's keeps it open until every worker has drained: the workers stop accepting, but
the kernel goes on queueing new connections on the parent's copy, and they hang until the
drain ends instead of being refused. In-flight requests are the workers' and still finish.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess


class _Supervisor(Multiprocess):
    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._stopping = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_listening)

    def _stop_listening(self, sig: int, frame: Any) -> None:
        # Here in the signal handler, not in handle_term: the main loop looks at its signal
        # queue only every half second.
        self._stopping = True
        for sock in self.sockets:
            sock.close()
        self.signal_queue.append(sig)

    def keep_subprocess_alive(self) -> None:
        if not self._stopping:  # no new worker on a closed socket in the signal's half second
            super().keep_subprocess_alive()

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
