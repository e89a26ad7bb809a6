"""Health: NOT_SERVING until migrations are done and the database answers, SERVING while up,
NOT_SERVING as soon as shutdown begins; and one server per SQLite file.

Readiness probes (Kubernetes gRPC probes, grpc-health-probe) read the standard
``grpc.health.v1.Health`` service: the overall status ("") and one per sessiond service.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "sessiond.v1.SessionService", "sessiond.v1.MessageService",
            "sessiond.v1.StatsService")
TIMEOUT = 20.0


async def check(channel: grpc.aio.Channel, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return answer.status


async def test_every_service_is_serving_once_started(server: Any) -> None:
    for service in SERVICES:
        assert await check(server.channel, service) == SERVING, service


async def test_shutdown_turns_health_not_serving_before_calls_are_refused(server: Any) -> None:
    stub = health_pb2_grpc.HealthStub(server.channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await asyncio.wait_for(watch.read(), TIMEOUT)
    assert first.status == SERVING
    stopping = asyncio.create_task(server.running.stop(grace=5))
    second = await asyncio.wait_for(watch.read(), TIMEOUT)
    assert second.status == NOT_SERVING
    watch.cancel()  # a probe that saw NOT_SERVING goes away; the grace period need not run out
    await asyncio.wait_for(stopping, TIMEOUT)
    server.closed = True  # stopped here; the fixture must not stop it again
    await server.channel.close()


def sqlite_config(tmp_path: Path, **overrides: Any) -> Any:
    from sessiond_server.config import ServerConfig

    settings: dict[str, Any] = {"database": tmp_path / "health.db", "address": "127.0.0.1:0"}
    return ServerConfig(**{**settings, **overrides})


async def test_not_serving_until_the_database_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessiond_server import app

    answered = asyncio.Event()
    pinged = asyncio.Event()
    real_ping = app.ping_database

    async def slow_ping(store: Any) -> None:
        pinged.set()
        await answered.wait()
        await real_ping(store)

    monkeypatch.setattr(app, "ping_database", slow_ping)
    address = f"127.0.0.1:{free_port()}"
    starting = asyncio.create_task(app.start_server(sqlite_config(tmp_path, address=address)))
    await asyncio.wait_for(pinged.wait(), TIMEOUT)
    async with grpc.aio.insecure_channel(address) as channel:
        # Listening, migrated, but the database has not answered yet.
        for service in SERVICES:
            assert await check(channel, service) == NOT_SERVING, service
        answered.set()
        running = await asyncio.wait_for(starting, TIMEOUT)
        try:
            assert await check(channel) == SERVING
        finally:
            await running.stop(grace=0)


async def test_a_database_that_does_not_answer_stops_the_start_and_frees_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessiond_server import app

    async def broken_ping(store: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(app, "ping_database", broken_ping)
        with pytest.raises(sqlite3.OperationalError):
            await app.start_server(sqlite_config(tmp_path))
    running = await app.start_server(sqlite_config(tmp_path))  # the lock was given back
    await running.stop(grace=0)


async def test_a_second_server_on_the_same_sqlite_file_is_refused(tmp_path: Path) -> None:
    from sessiond_server.app import start_server
    from sessiond_server.maintenance import DatabaseInUse

    first = await start_server(sqlite_config(tmp_path))
    try:
        with pytest.raises(DatabaseInUse, match="stop that sessiond first"):
            await start_server(sqlite_config(tmp_path))
        async with grpc.aio.insecure_channel(first.address) as channel:
            assert await check(channel) == SERVING  # the first one is unharmed
    finally:
        await first.stop(grace=0)


@contextlib.asynccontextmanager
async def database_held(server: Any) -> AsyncIterator[None]:
    """Another client holds the database so that the server's writes cannot proceed: SQLite's
    write lock from another connection, or an exclusive lock on PostgreSQL's change log."""
    if isinstance(server.database, Path):
        intruder = sqlite3.connect(server.database, isolation_level=None)
        intruder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            intruder.execute("ROLLBACK")
            intruder.close()
        return
    import asyncpg

    conn = await asyncpg.connect(server.database)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE changes IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


async def next_status(watch: Any, want: int) -> None:
    while True:
        answer = await asyncio.wait_for(watch.read(), TIMEOUT)
        if answer.status == want:
            return


async def test_health_is_not_serving_while_the_database_cannot_answer_and_recovers(
        make_server: Any) -> None:
    server = await make_server(health_check_interval_seconds=0.1, health_check_failures=2)
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(health_pb2.HealthCheckRequest())
    try:
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).status == SERVING
        async with database_held(server):
            await next_status(watch, NOT_SERVING)
            for service in SERVICES:
                assert await check(server.channel, service) == NOT_SERVING, service
        await next_status(watch, SERVING)
        for service in SERVICES:
            assert await check(server.channel, service) == SERVING, service
    finally:
        watch.cancel()


async def test_one_slow_probe_does_not_turn_health_not_serving(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sessiond_server import app

    probes = 0
    real_ping = app.ping_database

    async def one_slow_ping(store: Any) -> None:
        nonlocal probes
        probes += 1
        if probes == 1:
            await asyncio.sleep(0.3)  # longer than the interval: one probe finds no answer
        await real_ping(store)

    monkeypatch.setattr(app, "ping_database", one_slow_ping)
    server = await make_server(health_check_interval_seconds=0.2, health_check_failures=3)
    async with asyncio.timeout(TIMEOUT):
        while probes < 5:
            assert await check(server.channel) == SERVING
            await asyncio.sleep(0.05)
    assert server.running.readiness.serving
