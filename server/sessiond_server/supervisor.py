"""``sessiond serve --workers N``: N server processes on one address, one supervisor.

Each worker is a whole server (``app.run`` with a :class:`~.app.Replica`): a
replica of the database exactly as PostgreSQL replicas on several hosts are
(see ``store/feed.py``). The kernel spreads new connections over the
workers' listening sockets (SO_REUSEPORT); a connection stays with the
worker that accepted it.

What the supervisor does, and nothing else (it never opens the store):

* Holds the SQLite database's server lock, so ``restore`` and ``import``
  still refuse to run beside the server; the workers do not take it. After
  a clean stop of every worker it opens the file once to close it last.
* Takes the address first: it binds a placeholder socket (SO_REUSEPORT, never
  listening), which picks the port when the address asks for port 0 and
  keeps the port while a worker restarts.
* Forks the workers. Each dies with the supervisor (``PR_SET_PDEATHSIG``:
  SIGTERM, so it drains), reports on a pipe that it serves or why it cannot;
  a start failure of any worker is the start failure of the whole: the
  others are stopped and ``sessiond serve`` prints that one reason.
* Worker 0 runs compaction and retention; metrics are served by every worker
  on the metrics port + its index (each reports its own RPCs).
* A worker that dies is restarted after a backoff (0.5 s doubling to 30 s,
  back to 0.5 s once a worker has served a minute), and logged.
* SIGTERM or SIGINT: each worker is sent SIGTERM and drains as a single
  server does; the supervisor exits 0 once all have exited 0. A second
  signal kills the workers and exits 1, and so does a worker still running
  ``stop_seconds`` after the first (twice the shutdown grace plus a margin).
  The escalation is the supervisor's alone: a worker drains however many
  SIGTERMs it gets, because a SIGTERM to the process group (systemd's
  ``KillMode=control-group``, Ctrl-C in a terminal) reaches each worker
  twice, from the sender and from here.
* Signals are blocked across ``fork``, so none can run the supervisor's
  handler in a child before the child has set its own, and none reaches the
  supervisor before it knows the new worker's pid.

``python -m sessiond_server.supervisor <serve flags>`` runs one replica on
its own (no server lock): another process over the same file, on an
address of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import select
import signal
import socket
import sqlite3
import sys
import time
import traceback
from collections.abc import Iterable, Sequence

from .app import Replica, RunningServer, StartFailure, explain_start_failure, run
from .config import ServerConfig
from .maintenance import DatabaseLock
from .observability import configure_logging
from .store.postgres_url import postgres_url, redacted, sqlite_path
from .store.sqlite import close_last

log = logging.getLogger("sessiond")

#: ``workers = 0``: one per core, at most this many.
MAX_AUTO_WORKERS = 8
#: Seconds a worker gets to say it serves (it may be connecting to PostgreSQL).
START_TIMEOUT_SECONDS = 120.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A worker that served this long resets its backoff.
STEADY_SECONDS = 60.0
PR_SET_PDEATHSIG = 1
#: Seconds a worker gets to stop after the first signal beyond twice its
#: shutdown grace (the drain of its calls, then the server's stop, may each take
#: the grace), for closing the store; then the supervisor kills it.
STOP_MARGIN_SECONDS = 5.0
#: The signals that stop the supervisor (and, relayed as SIGTERM, its workers).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_count(config: ServerConfig) -> int:
    if config.workers > 0:
        return config.workers
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


@dataclasses.dataclass
class Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    report: int = -1  # the read end of its pipe, until it reports


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before the prctl
        os._exit(1)


def _child(config: ServerConfig, index: int, report: int, parent: int,
           unblocked: Iterable[int]) -> None:
    """The worker process: never returns. ``unblocked``: the signal mask to restore."""
    code = 1
    try:
        _die_with_parent(parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor relays a Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Blocked by spawn; a SIGTERM that came meanwhile acts now, under SIG_DFL
        # (nothing is open yet), never under the supervisor's inherited handler.
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

        def ready(running: RunningServer) -> None:
            os.write(report, b"ready\n")

        code = run(config, Replica(index=index, maintenance=index == 0, supervised=True),
                   ready)
    except StartFailure as exc:
        if config.log_level == "debug" and exc.__cause__ is not None:  # as serve does
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        with contextlib.suppress(OSError):
            os.write(report, f"error {exc}\n".encode(errors="replace")[:4000])
        code = 1
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        os._exit(code)


class Supervisor:
    def __init__(self, config: ServerConfig, count: int) -> None:
        self.config = config
        self.workers = [Worker(i) for i in range(count)]
        self.signals = 0

    def spawn(self, worker: Worker) -> None:
        read, write = os.pipe()
        parent = os.getpid()
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(read)
                _child(self.config, worker.index, write, parent, unblocked)
            os.close(write)
            worker.pid, worker.started, worker.report, worker.restart_at = (
                pid, time.monotonic(), read, None)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

    def on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        if self.signals == 2:
            log.warning("second signal: killing the workers")
        self.tell_all(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)

    def tell_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    def reap(self) -> list[tuple[Worker, int]]:
        """Workers that exited since last asked, with their exit codes."""
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for worker in self.workers:
                if worker.pid == pid:
                    worker.pid = 0
                    self.close_report(worker)
                    ended.append((worker, os.waitstatus_to_exitcode(status)))
        return ended

    def close_report(self, worker: Worker) -> str:
        """What the worker reported (empty if nothing yet), and stop listening to it."""
        said = ""
        if worker.report >= 0:
            with contextlib.suppress(OSError):
                ready, _, _ = select.select([worker.report], [], [], 0)
                if ready:
                    said = os.read(worker.report, 4096).decode(errors="replace").strip()
            os.close(worker.report)
            worker.report = -1
        return said

    def start_all(self) -> None:
        """Start every worker and wait until each serves; StartFailure if one cannot."""
        for worker in self.workers:
            if not self.signals:  # one told to stop already would never be told
                self.spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        waiting = {w.report: w for w in self.workers if w.pid}
        failure = ""
        while waiting and not failure and not self.signals:
            ready, _, _ = select.select(list(waiting), [], [], 0.2)
            for fd in ready:
                worker = waiting.pop(fd)
                said = os.read(fd, 4096).decode(errors="replace").strip()
                os.close(fd)
                worker.report = -1
                if said.startswith("error "):
                    failure = said.removeprefix("error ")
                elif said != "ready":
                    failure = f"worker {worker.index} exited before it served"
            if time.monotonic() > deadline:
                failure = f"a worker did not serve within {START_TIMEOUT_SECONDS:.0f}s"
        if failure:
            # The others finish starting first (one killed mid-start could leave a
            # child of its own behind), then stop as on SIGTERM; one that does not
            # answer in time is killed.
            while waiting and time.monotonic() < deadline:
                ready, _, _ = select.select(list(waiting), [], [], 0.2)
                for fd in ready:
                    waiting.pop(fd).report = -1
                    os.close(fd)
            for worker in self.workers:
                self.close_report(worker)
            self.tell_all(signal.SIGKILL if waiting else signal.SIGTERM)
            self.wait_all()
            raise StartFailure(failure)

    def wait_all(self, seconds: float | None = None) -> list[int]:
        """Wait until every worker has exited; their exit codes. Those still running
        after ``seconds`` (None: no bound) are killed."""
        deadline = None if seconds is None else time.monotonic() + seconds
        codes: list[int] = []
        while any(worker.pid for worker in self.workers):
            ended = self.reap()
            codes.extend(code for _, code in ended)
            if ended:
                continue
            if deadline is not None and time.monotonic() > deadline:
                late = [str(worker.index) for worker in self.workers if worker.pid]
                log.warning("worker %s did not stop within %.1fs; killing it",
                            ",".join(late), seconds)
                self.tell_all(signal.SIGKILL)
                deadline = None
            time.sleep(0.05)
        return codes

    @property
    def stop_seconds(self) -> float:
        """How long the workers get to stop after the first signal."""
        return 2 * self.config.shutdown_grace_seconds + STOP_MARGIN_SECONDS

    def serve(self) -> int:
        """Restart workers that die until a signal; then wait for all to drain."""
        while not self.signals:
            now = time.monotonic()
            for worker, code in self.reap():
                if now - worker.started > STEADY_SECONDS:
                    worker.backoff = BACKOFF_FIRST
                worker.restart_at = now + worker.backoff
                log.warning("worker %d exited (%s); restarting it in %.1fs", worker.index,
                            f"code {code}" if code >= 0 else f"signal {-code}", worker.backoff)
                worker.backoff = min(worker.backoff * 2, BACKOFF_MAX)
            for worker in self.workers:
                if worker.report >= 0 and worker.pid:
                    said = self.close_report(worker) if _readable(worker.report) else ""
                    if said.startswith("error "):
                        log.warning("worker %d cannot start: %s", worker.index,
                                    said.removeprefix("error "))
                    elif said == "ready":
                        log.info("worker %d serving again (pid %d)", worker.index, worker.pid)
                if worker.restart_at is not None and now >= worker.restart_at \
                        and not self.signals:
                    self.spawn(worker)
            time.sleep(0.1)
        log.info("supervisor: stopping %d workers", len(self.workers))
        codes = self.wait_all(self.stop_seconds)
        for worker in self.workers:
            self.close_report(worker)
        if self.signals != 1 or any(c != 0 for c in codes):
            return 1
        if postgres_url(self.config.database) is None:
            # Workers that drain together close together, and each leaves the
            # write-ahead log to the other (SQLite removes it on the last close
            # only); the next start would take it for the trace of a crash. So
            # the supervisor, now the only one with the file, closes last.
            with contextlib.suppress(sqlite3.Error):
                close_last(sqlite_path(self.config.database))
        return 0


def _readable(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def _take_address(address: str) -> tuple[socket.socket, str]:
    """A bound, never listening SO_REUSEPORT socket on ``address``; and the address with
    the port it got (the port chosen here when ``address`` asks for 0)."""
    from .app import ListenError, unbindable_reason

    host, _, port = address.rpartition(":")
    reason = unbindable_reason(address)
    if reason is not None:
        raise ListenError(address, reason)
    bare = host.strip("[]") or "0.0.0.0"
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((bare, int(port)))
    return sock, f"{host}:{sock.getsockname()[1]}"


def supervise(config: ServerConfig) -> int:
    """Run ``worker_count(config)`` workers until a signal; the exit code."""
    configure_logging(config.log_format, config.log_level)
    count = worker_count(config)
    lock: DatabaseLock | None = None
    placeholder: socket.socket | None = None
    try:
        if postgres_url(config.database) is None:
            lock = DatabaseLock(sqlite_path(config.database))
        placeholder, address = _take_address(config.address)
    except Exception as exc:
        if lock is not None:
            lock.release()
        raise StartFailure(explain_start_failure(exc, config)) from exc
    supervisor = Supervisor(dataclasses.replace(config, address=address, workers=1), count)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in STOP_SIGNALS}
    try:
        supervisor.start_all()
        if supervisor.signals:
            supervisor.wait_all(supervisor.stop_seconds)
            return 0 if supervisor.signals == 1 else 1
        log.info("supervising %d workers on %s database=%s pids=%s", count, address,
                 redacted(config.database), ",".join(str(w.pid) for w in supervisor.workers))
        return supervisor.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        placeholder.close()
        if lock is not None:
            lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    """One replica of the database on its own address, without the server lock."""
    import argparse

    from .settings import SettingsError, add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="python -m sessiond_server.supervisor",
                                     description=main.__doc__)
    add_serve_arguments(parser)
    try:
        config = config_from_args(parser.parse_args(argv), os.environ)
    except SettingsError as exc:
        print(f"sessiond: error: invalid configuration: {'; '.join(exc.problems)}",
              file=sys.stderr)
        return 2
    try:
        return run(config, Replica(maintenance=False))
    except StartFailure as exc:
        print(f"sessiond: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
