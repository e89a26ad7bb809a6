"""Ceilings: what this machine can do at all, measured in the same run.

A sessiond figure means little without the best a trivial program reaches on
the same cores at the same moment. Three ceilings:

* a bare ``grpc.aio`` echo server: a generic handler, bytes in and bytes out,
  no protobuf, no storage; the most a Python gRPC server does per second here;
* a bare ``grpc.aio`` fan-out server: a writer publishes bytes, every
  subscriber's server-streaming call receives them, stamped with the time
  they were published (frames that queue up meanwhile share one response,
  as sessiond batches revisions); the most a Python gRPC server fans out here;
* raw SQLite inserts through aiosqlite (WAL, synchronous=FULL): one commit per
  row, and 64 rows per commit (what group commit can reach).

Each ceiling server runs in a process of its own, as sessiond does, and is
loaded by the same worker processes with the same bytes and concurrency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

ECHO_METHOD = "/bench.Echo/Echo"
PUBLISH_METHOD = "/bench.Fanout/Publish"
SUBSCRIBE_METHOD = "/bench.Fanout/Subscribe"
# A subscriber's queue holds this many messages; a full queue makes Publish
# wait (backpressure), so the ceiling never "wins" by buffering without bound.
FANOUT_QUEUE = 1024
# A ceiling server exits by itself after this long, whatever happens.
SERVER_LIFETIME_S = 1800.0


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


class _FanoutHub:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes]] = set()

    async def publish(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        frame = time.time_ns().to_bytes(8, "big") + len(request).to_bytes(4, "big") + request
        for queue in list(self.queues):
            await queue.put(frame)
        return b""

    async def subscribe(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(FANOUT_QUEUE)
        self.queues.add(queue)
        try:
            yield bytes(12)  # "subscribed": a zero stamp and an empty response
            while True:
                # Whatever queued up meanwhile goes in the same response, as
                # sessiond puts several revisions in one WatchSessionsResponse.
                frames = [await queue.get()]
                while len(frames) < 64 and not queue.empty():
                    frames.append(queue.get_nowait())
                yield b"".join(frames)
        finally:
            self.queues.discard(queue)


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, hub: _FanoutHub) -> None:
        self._methods = {
            ECHO_METHOD: grpc.unary_unary_rpc_method_handler(_echo),
            PUBLISH_METHOD: grpc.unary_unary_rpc_method_handler(hub.publish),
            SUBSCRIBE_METHOD: grpc.unary_stream_rpc_method_handler(hub.subscribe),
        }

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        return self._methods.get(handler_call_details.method)


async def _serve(port: int, ready: multiprocessing.synchronize.Event) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
    )
    server.add_generic_rpc_handlers((_Handler(_FanoutHub()),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    try:
        await asyncio.wait_for(server.wait_for_termination(), SERVER_LIFETIME_S)
    finally:
        await server.stop(0)


def serve_ceiling(port: int, ready: multiprocessing.synchronize.Event) -> None:
    """Process entry point: the echo and fan-out ceiling server on loopback."""
    asyncio.run(_serve(port, ready))


class CeilingServer:
    """The ceiling server in a spawned process of its own."""

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        self.target = f"127.0.0.1:{port}"
        self.process = context.Process(
            target=serve_ceiling, args=(port, ready), name="bench-ceiling", daemon=True
        )
        self.process.start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError("the ceiling server did not start within 30 s")

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


async def _sqlite_insert_rate(
    path: Path, rows_per_commit: int, duration_s: float, payload: bytes
) -> tuple[int, list[int], float]:
    import aiosqlite

    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS message (session_id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " created_at INTEGER NOT NULL, content BLOB NOT NULL, PRIMARY KEY (session_id, seq))"
        )
        seq = 0
        rows = 0
        latencies: list[int] = []
        started = time.monotonic()
        stop_at = started + duration_s
        while time.monotonic() < stop_at:
            batch = []
            for _ in range(rows_per_commit):
                seq += 1
                batch.append(("s1", seq, time.time_ns() // 1000, payload))
            t0 = time.monotonic_ns()
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany("INSERT INTO message VALUES (?, ?, ?, ?)", batch)
            await db.execute("COMMIT")
            latencies.append(time.monotonic_ns() - t0)
            rows += rows_per_commit
        return rows, latencies, time.monotonic() - started


def sqlite_insert_rate(
    directory: str, rows_per_commit: int, duration_s: float, payload_bytes: int
) -> tuple[int, list[int], float]:
    """Rows inserted, per-commit latencies (ns) and elapsed seconds.

    Runs in a process of its own (see ``run_in_process``) on a fresh file.
    """
    path = Path(directory) / f"raw-{rows_per_commit}-{os.getpid()}.sqlite"
    try:
        return asyncio.run(
            _sqlite_insert_rate(path, rows_per_commit, duration_s, b"x" * payload_bytes)
        )
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def sqlite_version() -> str:
    return sqlite3.sqlite_version
