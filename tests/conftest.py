"""Fixtures that start real sessiond servers: in process on a fake clock, or as a subprocess.

Every test talks to a fresh server on its own temporary SQLite file, only through gRPC.

* ``server``: an in-process server with default limits and a ``FakeClock``.
* Both are parametrised over the storage backends: ``[sqlite]`` on a temporary file and
  ``[postgres]`` on a fresh database of a throwaway PostgreSQL cluster (marked ``postgres``;
  skipped with the reason when PostgreSQL cannot be started here, a failure when CI=true).
* ``make_server(**overrides)``: the same with other ``ServerConfig`` fields (``limits=`` takes a
  ``Limits`` or a dict of its fields; ``clock=`` a ``FakeClock``; ``database=`` a path, to
  start again on an existing file).
* ``server_process(database=None, *extra_args)``: ``sessiond serve`` in a subprocess on a free
  port, ready once the standard health service answers SERVING; it can be killed (SIGKILL),
  terminated and restarted on the same port and database.

The server package is imported inside the fixtures so that collecting the suite never
depends on the server being importable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import FakeClock
from sessiond.v1 import (
    message_service_pb2_grpc,
    session_service_pb2_grpc,
    stats_service_pb2_grpc,
)

__all__ = ["FakeClock"]

HEALTH_TIMEOUT_SECONDS = 20.0
REPO = Path(__file__).resolve().parent.parent
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs a PostgreSQL server (scripts/postgres.sh starts one)"
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for the whole run: $SESSIOND_TEST_POSTGRES_URL, or a
    throwaway cluster that scripts/postgres.sh installs if needed and starts (fsync off)."""
    given = os.environ.get("SESSIOND_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    started = subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres.sh"), "start"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SESSIOND_PG_FAST": "1"},
    )
    exported = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.splitlines() if line.startswith("export ")
    )
    url = exported.get("SESSIOND_TEST_POSTGRES_URL")
    if started.returncode != 0 or not url:
        reason = (f"PostgreSQL could not be started by scripts/postgres.sh "
                  f"(exit {started.returncode}): {started.stderr.strip()[-500:]}")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield url
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "stop",
                        exported["SESSIOND_PG_DIR"]], capture_output=True, timeout=60,
                       check=False)


async def create_postgres_database(admin_url: str) -> str:
    """A fresh, empty database on the server of ``admin_url``; its URL."""
    import asyncpg

    name = f"sessiond_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_postgres_databases(admin_url: str, urls: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        for url in urls:
            await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclasses.dataclass
class ServerHarness:
    """A running in-process server, its clock, a channel and the three service stubs."""

    running: Any
    clock: FakeClock
    channel: grpc.aio.Channel
    sessions: session_service_pb2_grpc.SessionServiceStub
    messages: message_service_pb2_grpc.MessageServiceStub
    stats: stats_service_pb2_grpc.StatsServiceStub
    closed: bool = False

    @property
    def address(self) -> str:
        return str(self.running.address)

    @property
    def store(self) -> Any:
        return self.running.store

    @property
    def database(self) -> Path | str:
        """The SQLite file, or the PostgreSQL URL; either starts another server on the same data."""
        database = self.running.config.database
        return database if str(database).startswith("postgresql:") else Path(database)

    async def check_consistency(self) -> list[str]:
        """Integrity check and counter recounts, as the store reports them."""
        return list(await self.running.store.check_consistency())

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.channel.close()
        await self.running.stop(grace=None)


MakeServer = Callable[..., Awaitable[ServerHarness]]


@pytest.fixture(params=BACKENDS)
async def make_server(tmp_path: Path, request: pytest.FixtureRequest
                      ) -> AsyncIterator[MakeServer]:
    from sessiond_server.app import start_server
    from sessiond_server.config import Limits, ServerConfig

    started: list[ServerHarness] = []
    numbers = itertools.count(1)
    admin_url = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    databases: list[str] = []

    async def factory(**overrides: Any) -> ServerHarness:
        clock = overrides.pop("clock", None) or FakeClock()
        limits = overrides.pop("limits", None)
        if isinstance(limits, dict):
            limits = Limits(**limits)
        database = overrides.pop("database", None)
        if database is None and admin_url is not None:
            database = await create_postgres_database(admin_url)
            databases.append(database)
        if database is None:
            database = tmp_path / f"sessiond-{next(numbers)}.db"
        config = ServerConfig(
            database=database if isinstance(database, str) else Path(database),
            address=overrides.pop("address", "127.0.0.1:0"),
            clock=clock.now_micros,
            limits=limits or Limits(),
            **overrides,
        )
        running = await start_server(config)
        channel = grpc.aio.insecure_channel(running.address)
        harness = ServerHarness(
            running=running,
            clock=clock,
            channel=channel,
            sessions=session_service_pb2_grpc.SessionServiceStub(channel),
            messages=message_service_pb2_grpc.MessageServiceStub(channel),
            stats=stats_service_pb2_grpc.StatsServiceStub(channel),
        )
        started.append(harness)
        return harness

    yield factory
    for harness in reversed(started):
        await harness.close()
    if admin_url is not None and databases:
        await drop_postgres_databases(admin_url, databases)


@pytest.fixture
async def server(make_server: MakeServer) -> ServerHarness:
    return await make_server()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``sessiond serve`` in a subprocess. Methods block; they are safe in async tests too."""

    def __init__(self, database: Path, log_path: Path, extra_args: tuple[str, ...]) -> None:
        self.database = database
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        executable = Path(sys.executable).parent / "sessiond"
        return [
            str(executable),
            "serve",
            "--database",
            str(self.database),
            "--address",
            self.address,
            *self.extra_args,
        ]

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server process is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_until_serving()

    def wait_until_serving(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"sessiond exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"sessiond not SERVING after {timeout} s:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        assert self.process is not None
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return int(self.process.returncode)

    def restart(self) -> None:
        """Kill the process if it still runs, then start it again on the same port and file."""
        self.kill()
        self.start()

    def cleanup(self) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []
    numbers = itertools.count(1)

    def factory(database: Path | None = None, *extra_args: str) -> ServerProcess:
        n = next(numbers)
        proc = ServerProcess(
            database=database or tmp_path / f"sessiond-process-{n}.db",
            log_path=tmp_path / f"sessiond-process-{n}.log",
            extra_args=extra_args,
        )
        started.append(proc)
        proc.start()
        return proc

    yield factory
    for proc in started:
        proc.cleanup()
