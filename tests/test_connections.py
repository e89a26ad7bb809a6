"""Connections are bounded: idle sockets cannot exhaust the server's file descriptors.

A flood of TCP connections that never speak HTTP/2 used to hold a descriptor each until the
kernel ran out, and health checks failed until they were reaped a minute later. Now the
server caps open connections (new ones beyond the cap are closed at accept), closes a
connection that has not finished its HTTP/2 handshake in time, and raises its soft
descriptor limit to the hard one at start, fitting the cap below it.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from conftest import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
DEADLINE_SECONDS = 30.0


def health(channel: grpc.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=2).status


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the socket (whatever it sent before)."""
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@contextlib.contextmanager
def idle_sockets(address: str, count: int) -> Iterator[list[socket.socket]]:
    host, port = address.rsplit(":", 1)
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection((host, int(port)), timeout=5))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_idle_connections_are_capped_and_reaped_while_clients_are_served(
        server_process: Any) -> None:
    server = server_process(None, "--max-connections", "64",
                            "--handshake-timeout-seconds", "1")
    with grpc.insecure_channel(server.address) as established:
        assert health(established) == SERVING
        with idle_sockets(server.address, 300) as flood:
            # A client connected before the flood keeps being served during it.
            assert health(established) == SERVING
            deadline = time.monotonic() + DEADLINE_SECONDS
            while not all(closed_by_peer(sock) for sock in flood):
                assert time.monotonic() < deadline, "idle connections were never closed"
                time.sleep(0.1)
            # Every idle socket is gone (cut at the cap, or at the handshake deadline), so a
            # new client is served again while the attacker still holds its sockets open.
            with grpc.insecure_channel(server.address) as fresh:
                assert health(fresh) == SERVING
    assert server.running


def test_the_descriptor_limit_is_raised_and_the_cap_fitted_below_it(tmp_path: Path) -> None:
    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))

    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "server.log"
    executable = Path(sys.executable).parent / "sessiond"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(executable), "serve", "--database", str(tmp_path / "fd.db"),
             "--address", address], stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=low_soft_limit)
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=DEADLINE_SECONDS)
            assert health(channel) == SERVING
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        assert line.split()[3:5] == ["2048", "2048"], line
        text = log_path.read_text()
        assert "max_connections lowered from 10000 to 1792" in text, text
    finally:
        process.terminate()
        process.wait(timeout=20)
