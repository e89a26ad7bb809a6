"""Assembles the server: store, hub, services, health, reflection and background loops.

``start_server`` is what tests and embedders call; ``run`` is what
``sessiond serve`` calls: it blocks, and shuts down in a fixed order on
SIGTERM or SIGINT (health NOT_SERVING, watch streams told and ended, in-flight
calls given the grace period, store closed). A second signal forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from sessiond.v1 import (
    message_service_pb2,
    message_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    stats_service_pb2,
    stats_service_pb2_grpc,
)

from .api.context import ApiContext
from .api.messages import MessageService
from .api.page_tokens import PageTokens
from .api.sessions import SessionService
from .api.stats import StatsService
from .config import ServerConfig
from .store import SQLiteStore
from .watch import WatchHub

log = logging.getLogger("sessiond")


def open_store(config: ServerConfig) -> SQLiteStore:
    """The store the configuration names (SQLite is the embedded default)."""
    return SQLiteStore(
        config.database, clock=config.clock,
        abandoned_after_seconds=config.abandoned_after_seconds,
        durability=config.durability, readers=config.readers,
        max_batch=config.max_batch_writes,
    )

SERVICE_NAMES = (
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    message_service_pb2.DESCRIPTOR.services_by_name["MessageService"].full_name,
    stats_service_pb2.DESCRIPTOR.services_by_name["StatsService"].full_name,
)


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class RunningServer:
    """A started server; ``stop`` shuts it down in order."""

    server: grpc.aio.Server
    store: SQLiteStore
    hub: WatchHub
    config: ServerConfig
    health: HealthServicer
    port: int
    tasks: list[asyncio.Task[None]]

    @property
    def address(self) -> str:
        host = self.config.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        started = time.monotonic()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.hub.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop(grace)
        await self.store.close()
        log.info("stopped: revision=%d elapsed=%.2fs", self.store.revision,
                 time.monotonic() - started)


async def _every(seconds: float, what: str, action: Any) -> None:
    """Run ``action`` every ``seconds``; failures are logged, never fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except Exception:
            log.exception("%s failed", what)


async def start_server(config: ServerConfig) -> RunningServer:
    store = open_store(config)
    await store.open()
    if store.recovered_wal:
        log.info("database %s had a write-ahead log left by an unclean stop; SQLite "
                 "replayed it (revision %d)", config.database, store.revision)
    hub = WatchHub(store)
    api = ApiContext(store=store, hub=hub, config=config,
                     tokens=PageTokens(config.page_token_key or store.page_token_key))
    limits = config.limits
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ])
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(SessionService(api), server)
    message_service_pb2_grpc.add_MessageServiceServicer_to_server(MessageService(api), server)
    stats_service_pb2_grpc.add_StatsServiceServicer_to_server(StatsService(api), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
    if not is_loopback(config.address):
        log.warning("listening on %s, beyond loopback, without authentication",
                    config.address)
    port = server.add_insecure_port(config.address)
    if port == 0:
        await store.close()
        raise OSError(f"cannot listen on {config.address}")
    await server.start()
    tasks = [asyncio.create_task(_every(
        config.compaction_interval_seconds, "compaction",
        lambda: store.compact(config.changelog_keep_revisions,
                              config.changelog_max_age_seconds)))]
    if config.retention_ttl_seconds > 0 or config.retention_max_sessions > 0:
        tasks.append(asyncio.create_task(_every(
            config.retention_interval_seconds, "retention",
            lambda: _apply_retention(store, config))))
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, store, hub, config, health_servicer, port, tasks)
    log.info("serving on %s database=%s revision=%d durability=%s", running.address,
             config.database, store.revision, config.durability)
    return running


async def _apply_retention(store: SQLiteStore, config: ServerConfig) -> None:
    from .api.context import DEFAULT_SCOPE

    before = 0
    if config.retention_ttl_seconds > 0:
        before = config.clock() - int(config.retention_ttl_seconds * 1_000_000)
    while True:
        count, more, _ = await store.purge_sessions(
            DEFAULT_SCOPE, before, config.retention_max_sessions, [], False, 1000)
        if count:
            log.info("retention removed %d sessions", count)
        if not more:
            return


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit code."""
    logging.basicConfig(level=os.environ.get("SESSIOND_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> int:
        running = await start_server(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("second signal: exiting now")
                os._exit(1)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await stop.wait()
        log.info("shutting down (grace %.1fs)", config.shutdown_grace_seconds)
        await running.stop()
        return 0

    return asyncio.run(main())
