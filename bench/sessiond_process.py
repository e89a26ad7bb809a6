"""``sessiond serve`` as a user starts it, watched from outside.

The server is started through its console script in a subprocess, on a temp
database and a free loopback port, and counted as ready only when the
standard gRPC health service answers SERVING: the benchmark sees what a user
sees, start-up included.

Peak memory is the kernel's high-water mark of resident memory (VmHWM in
/proc/PID/status). Writing 5 to /proc/PID/clear_refs resets it, so each phase
reports its own peak, not the largest of the whole run.

With ``profile_output`` set, the server runs under bench.profiled_server
(cProfile on every thread) and writes its pstats there when it stops.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sessiond_command() -> list[str]:
    """The console script next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("sessiond")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("sessiond")
    if found is None:
        raise RuntimeError("the sessiond command is not installed (make install)")
    return [found]


def read_status_kib(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status in KiB (NaN when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS; False when the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(pid: int) -> float:
    return read_status_kib(pid, "VmHWM") / 1024


class SessiondServer:
    """One ``sessiond serve`` subprocess on a database file of its own."""

    def __init__(
        self, database: Path, durability: str, log_path: Path, profile_output: Path | None = None
    ) -> None:
        self.database = database
        self.durability = durability
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._log = log_path.open("ab")
        launcher = sessiond_command()
        if profile_output is not None:
            launcher = [sys.executable, "-m", "bench.profiled_server", str(profile_output)]
        command = [
            *launcher,
            "serve",
            "--database",
            str(database),
            "--address",
            self.target,
            "--durability",
            durability,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
            # A native crash leaves every thread's Python stack in the log.
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self.started_in_s = self._wait_serving()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_serving(self) -> float:
        started = time.monotonic()
        deadline = started + START_TIMEOUT_S
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"sessiond serve exited with {self.process.returncode}; "
                        f"see {self._log.name}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sessiond serve was not SERVING within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL if it takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()
        return self.process.returncode

    def database_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.database}{suffix}").st_size
        return total
