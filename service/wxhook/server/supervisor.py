"""`wxhook serve --workers N`: uvicorn's supervisor, with SIGHUP passed on to every worker.

uvicorn's own answer to SIGHUP is to replace every worker; each then starts afresh and a
rules file broken at that moment would stop it from starting. Passed on instead, SIGHUP
makes each worker reload its rules in place, keeping the last good ones on a bad file.
A worker is spawned with SIGHUP blocked and takes it over (service/hangup.py) before
anything else runs in it, so one passed on while it starts cannot end it.

Signal handlers only queue the signal and wake the main loop (a byte on a socket, through
signal.set_wakeup_fd); the main loop does the work. A handler that closed the sockets or
started processes itself would run in the middle of whatever the loop was doing (a worker
being spawned with those sockets: "bad value(s) in fds_to_keep", the loop dead and a
worker serving on). Whatever ends the loop, the workers are stopped and waited for.
A worker that ends is replaced, and its metric files retired (service/multiproc.py).

At SIGTERM or SIGINT the supervisor closes its own copy of the listening socket at once.
uvicorn's keeps it open until every worker has drained: the workers stop accepting, but
the kernel goes on queueing new connections on the parent's copy, and they hang until the
drain ends instead of being refused. In-flight requests are the workers' and still finish.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import time
from multiprocessing.connection import wait
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from wxhook.server import hangup
from wxhook.server.logs import get_logger

_STOP = {signal.SIGTERM, signal.SIGINT}
TICK = 0.5  # seconds between looks at the workers when no signal comes
# Seconds a worker gets to end after SIGTERM: past its own bounds (uvicorn's graceful
# shutdown, then the late deliveries' grace), one still running is hung and is killed.
STOP_WAIT = 30.0


class _Worker(Process):
    """uvicorn's worker process, which takes SIGHUP over before anything else runs in it."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        hangup.install()  # unblocks SIGHUP: one passed on while this worker started comes now
        super().target(sockets)


class _Supervisor(Multiprocess):
    _wake: socket.socket  # readable when a signal came (set_wakeup_fd), from run() on

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)  # handlers that queue every signal it knows
        self.log = get_logger("wxhook.supervisor")
        if hangup.take_pending():  # a SIGHUP before this: the workers read the file anyway
            self.log.info("sighup_before_workers", why="the workers load the rules as they start")

    def run(self) -> None:
        self._wake, wake_in = socket.socketpair()
        self._wake.setblocking(False)
        wake_in.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_in.fileno(), warn_on_full_buffer=False)
        self.log.info("supervisor_started", pid=os.getpid(), workers=self.processes_num)
        try:
            self.init_processes()
            while True:
                self.handle_signals()
                if self.should_exit.is_set():
                    break
                self.keep_subprocess_alive()
                select.select([self._wake], [], [], TICK)
                while _drained(self._wake):
                    pass
        finally:
            self._stop_listening()
            self.terminate_all()
            self.join_all()
            signal.set_wakeup_fd(old_wakeup)
            self._wake.close()
            wake_in.close()
        self.log.info("supervisor_stopped", pid=os.getpid())

    def _answers(self, worker: Process) -> bool:
        """False when the worker has ended or does not answer in time (hung)."""
        if not worker.process.is_alive():
            return False
        # uvicorn's ping waits the whole timeout for a worker that dies meanwhile (this
        # process holds both ends of the pipe) and cannot be cut short by a signal.
        try:
            worker.parent_conn.send(b"ping")
            ready = wait([worker.parent_conn, worker.process.sentinel, self._wake],
                         self.config.timeout_worker_healthcheck)
            if worker.parent_conn in ready:
                worker.parent_conn.recv()
                return True
        except (OSError, EOFError, pickle.UnpicklingError):
            return False
        # A signal came first: look again once the main loop has handled it.
        return self._wake in ready and worker.process.sentinel not in ready

    def terminate_all(self) -> None:
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                process.terminate()
                # A stopped worker (SIGSTOP, a debugger) acts on SIGTERM once continued.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)

    def join_all(self) -> None:
        deadline = time.monotonic() + STOP_WAIT
        for process in self.processes:
            process.process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                self.log.error("worker_killed", pid=process.pid,
                               why=f"still running {STOP_WAIT:.0f} s after SIGTERM")
                process.kill()
                process.join()

    def _stop_asked(self) -> bool:
        return self.should_exit.is_set() or any(sig in _STOP for sig in self.signal_queue)

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.config, self.sockets)
        # Blocked while it is created, so blocked in the new process from its first
        # instruction (a signal mask is inherited) until _Worker.target handles SIGHUP.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return worker

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            if self._stop_asked():
                return
            self.processes.append(self._spawn())

    def keep_subprocess_alive(self) -> None:
        for idx, process in enumerate(self.processes):
            if self._stop_asked():
                return
            if self._answers(process):
                continue
            process.kill()  # hung, or already gone
            process.join()
            self._retire(process.pid)
            if process.exitcode == STARTUP_FAILURE:
                # As uvicorn: the app, TLS or socket is broken and would fail every restart.
                self.log.error("worker_failed_to_start", pid=process.pid,
                               exitcode=process.exitcode)
                self.should_exit.set()
                return
            if self._stop_asked():
                return
            self.processes[idx] = self._spawn()
            self.log.warning("worker_replaced", pid=process.pid, exitcode=process.exitcode,
                             new_pid=self.processes[idx].pid)

    def _retire(self, pid: int | None) -> None:
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if pid is not None and metrics_dir:
            from wxhook.server.multiproc import retire

            retire(metrics_dir, pid)

    def handle_hup(self) -> None:
        pids = [p.pid for p in self.processes if p.pid is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # died since; replaced at the next look
                os.kill(pid, signal.SIGHUP)
        self.log.info("sighup_passed_on", workers=pids)

    def handle_ttin(self) -> None:
        self.processes_num += 1
        self.processes.append(self._spawn())
        self.log.info("worker_added", workers=self.processes_num)

    def handle_ttou(self) -> None:
        if self.processes_num <= 1:
            self.log.info("worker_not_removed", why="one worker is the fewest")
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        self._retire(process.pid)
        self.log.info("worker_removed", pid=process.pid, workers=self.processes_num)


def _drained(sock: socket.socket) -> bool:
    """Read what the signal handlers wrote; True while there may be more."""
    try:
        return len(sock.recv(4096)) == 4096
    except BlockingIOError:
        return False


def serve(app: str, **options: Any) -> None:
    """uvicorn.run(app, **options), with SIGHUP passed on when there are several workers."""
    config = uvicorn.Config(app, **options)
    if config.workers <= 1:
        uvicorn.run(app, **options)
        return
    _Supervisor(config, sockets=[config.bind_socket()]).run()
