"""Assembles the server: store, hub, services, health, reflection and background loops.

``start_server`` is what tests and embedders call; ``run`` is what
``sessiond serve`` calls: it blocks, and shuts down in a fixed order on
SIGTERM or SIGINT (health NOT_SERVING, watch streams told and ended, in-flight
calls given the grace period, store closed). A second signal forces exit,
except in a worker of the supervisor, which escalates for it.
With ``workers`` above 1 it hands over to the supervisor (``supervisor.py``),
whose workers each run this same server as a :class:`Replica`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import resource
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

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
from sessiond.version import build_info

from .api.context import ApiContext
from .api.messages import MessageService
from .api.page_tokens import PageTokens
from .api.sessions import SessionService
from .api.stats import StatsService
from .auth import CallerGate, prepare_security
from .config import Limits, ServerConfig
from .maintenance import DatabaseLock
from .observability import (
    CursorTrackingHub,
    Observability,
    configure_logging,
    ping_database,
)
from .readiness import StorageReadiness
from .store import Scope, SQLiteStore
from .store.postgres_url import postgres_url, redacted, sqlite_path
from .watch import WatchHub

if TYPE_CHECKING:
    from .store.postgres import PostgresStore

log = logging.getLogger("sessiond")


#: The stores open_store returns; both implement store.SessionStore.
Store = Union[SQLiteStore, "PostgresStore"]


@dataclasses.dataclass(frozen=True)
class Replica:
    """How a server runs as one of several processes on one address and one database.

    It holds no server lock (the supervisor does), binds with SO_REUSEPORT,
    runs compaction and retention only if ``maintenance``, and serves
    metrics on the configured port + ``index`` (when the port is not 0).

    ``supervised``: started by the supervisor of ``serve --workers``, which
    owns escalation. Such a replica drains on SIGTERM however many it gets (a
    SIGTERM to the whole process group reaches it from the sender and again
    from the supervisor) and ignores SIGINT; the supervisor SIGKILLs it on a
    second signal of its own. A replica on its own keeps the standalone rule.
    """

    index: int = 0
    maintenance: bool = True
    supervised: bool = False


def open_store(config: ServerConfig) -> Store:
    """The store the configuration names: a PostgreSQL URL, else a SQLite file (the default)."""
    url = postgres_url(config.database)
    if url is not None:
        # Imported here: asyncpg is an optional dependency (the `postgres` extra).
        from .store.postgres import PostgresStore

        return PostgresStore(
            url, clock=config.clock, abandoned_after_seconds=config.abandoned_after_seconds,
            max_batch=config.max_batch_writes, pool_min_size=config.postgres_pool_min_size,
            pool_max_size=config.postgres_pool_max_size,
            statement_timeout_seconds=config.postgres_statement_timeout_seconds,
            poll_interval_seconds=config.postgres_poll_interval_seconds,
        )
    return SQLiteStore(
        sqlite_path(config.database), clock=config.clock,
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
    store: Store
    hub: WatchHub
    config: ServerConfig
    health: HealthServicer
    port: int
    tasks: list[asyncio.Task[None]]
    observability: Observability | None = None
    # The SQLite database's server lock (maintenance.DatabaseLock); None for PostgreSQL.
    lock: DatabaseLock | None = None
    # The interceptors of the security layer; the CallerGate among them drains calls.
    security_interceptors: tuple[Any, ...] = ()
    # The storage probe that keeps health NOT_SERVING while the database cannot answer.
    readiness: StorageReadiness | None = None

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on; 0 when metrics are off."""
        return self.observability.metrics_port if self.observability else 0

    @property
    def address(self) -> str:
        host = self.config.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        started = time.monotonic()
        if self.observability is not None:
            self.observability.interceptor.shutting_down = True
        if self.readiness is not None:
            self.readiness.close()
        await _set_health(self.health, False)
        gates = [i for i in self.security_interceptors if isinstance(i, CallerGate)]
        for gate in gates:
            gate.draining = True
        self.hub.close()
        for gate in gates:
            await gate.drain(grace)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop(grace)
        summary = self.observability.interceptor.shutdown_summary() if self.observability else None
        if summary:
            log.info("%s", summary)
        await self.store.close()
        if self.observability is not None:  # off the loop: the HTTP server polls at 0.5 s
            await asyncio.to_thread(self.observability.close)
        if self.lock is not None:
            self.lock.release()
        lock = self.store.write_lock if isinstance(self.store, SQLiteStore) else None
        log.info("stopped: revision=%d rpcs=%d elapsed=%.2fs%s", self.store.revision,
                 self.observability.rpc_count() if self.observability else 0,
                 time.monotonic() - started,
                 "" if lock is None else f" writes={self.store.writer_stats[1]} write_lock_"
                 f"held={lock.held_seconds:.3f}s write_lock_wait={lock.wait_seconds:.3f}s")


async def _set_health(health: HealthServicer, serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", *SERVICE_NAMES):
        await health.set(name, status)


#: Descriptors the process keeps for itself (database files, logs, the metrics
#: port) when the connection cap is fitted to the descriptor limit.
RESERVED_DESCRIPTORS = 256


def raise_descriptor_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def server_options(limits: Limits, reuseport: bool = False) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: message sizes, keepalive and connection bounds.

    Connections are bounded three ways, so idle sockets cannot exhaust the process's file
    descriptors: a cap on open connections (fitted below the descriptor limit, which is first
    raised to its hard maximum), a deadline for the HTTP/2 handshake (a socket that never
    speaks HTTP/2 is closed then), and an idle timeout for connections with no call open.
    """
    descriptors = raise_descriptor_limit()
    cap = min(limits.max_connections, max(descriptors - RESERVED_DESCRIPTORS, 1))
    if cap < limits.max_connections:
        log.warning("max_connections lowered from %d to %d to fit the open-file limit (%d); "
                    "raise it with `ulimit -n` or LimitNOFILE=", limits.max_connections, cap,
                    descriptors)
    options = [
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", int(reuseport)),
        ("grpc.max_allowed_incoming_connections", cap),
        ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout_seconds * 1000)),
    ]
    if limits.connection_idle_seconds > 0:
        options.append(("grpc.max_connection_idle_ms",
                        int(limits.connection_idle_seconds * 1000)))
    return options


async def _every(seconds: float, what: str, action: Any) -> None:
    """Run ``action`` every ``seconds``; failures are logged, never fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except Exception:
            log.exception("%s failed", what)


async def start_server(config: ServerConfig, replica: Replica | None = None) -> RunningServer:
    """Start a server; a failed start undoes what it had started (listener, store, lock).

    Nothing is left behind by a failed start: no writer thread, no open
    connection, no held lock, so ``sessiond serve`` can exit at once.
    ``replica`` starts it as one of several processes (see :class:`Replica`).
    """
    undo = contextlib.AsyncExitStack()
    try:
        return await _start(config, undo, replica)
    except BaseException:
        try:
            await undo.aclose()  # every step is undone even when one of them fails
        except Exception:
            log.debug("undoing a failed start failed too", exc_info=True)
        raise


async def _start(config: ServerConfig, undo: contextlib.AsyncExitStack,
                 replica: Replica | None) -> RunningServer:
    """The start, each step registering its undoing on ``undo`` (kept only on failure)."""
    security = prepare_security(config, loopback=is_loopback(config.address))
    lock = _lock_database(config) if replica is None else None
    if lock is not None:
        undo.callback(lock.release)
    store = open_store(config)
    undo.push_async_callback(store.close)
    await store.open()
    if store.recovered_wal:
        log.info("database %s had a write-ahead log left by an unclean stop; SQLite "
                 "replayed it (revision %d)", config.database, store.revision)
    hub = CursorTrackingHub(store, config.watch_buffer_bytes)
    observability = Observability(
        store, hub, database=None if postgres_url(config.database) else sqlite_path(
            config.database), abandoned_after_seconds=config.abandoned_after_seconds,
        clock=config.clock)
    undo.callback(observability.close)
    api = ApiContext(store=store, hub=hub, config=config,
                     tokens=PageTokens(config.page_token_key or store.page_token_key),
                     authenticated=security.keys is not None)
    server = grpc.aio.server(interceptors=[observability.interceptor, *security.interceptors],
                             options=server_options(config.limits,
                                                    reuseport=replica is not None))
    undo.push_async_callback(server.stop, 0)
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(SessionService(api), server)
    message_service_pb2_grpc.add_MessageServiceServicer_to_server(MessageService(api), server)
    stats_service_pb2_grpc.add_StatsServiceServicer_to_server(StatsService(api), server)
    health_servicer = HealthServicer()
    for name in ("", *SERVICE_NAMES):  # the servicer starts "" as SERVING: not yet
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
    port = _listen(server, config.address, security.credentials,
                   reuseport=replica is not None)
    await server.start()
    # Health turns SERVING only once the database answers; a failure ends the start.
    await ping_database(store)
    if config.metrics_address:
        observability.serve_metrics(config.metrics_address if replica is None
                                    else _offset_port(config.metrics_address, replica.index))
    readiness = StorageReadiness(
        lambda: ping_database(store), lambda up: _set_health(health_servicer, up),
        config.health_check_interval_seconds, config.health_check_failures)
    tasks = [asyncio.create_task(readiness.run())]
    maintenance = replica is None or replica.maintenance  # compaction, retention: one worker
    if maintenance:
        tasks.append(asyncio.create_task(_every(
            config.compaction_interval_seconds, "compaction",
            lambda: store.compact(config.changelog_keep_revisions,
                                  config.changelog_max_age_seconds,
                                  config.changelog_max_bytes))))
    if maintenance and (config.retention_ttl_seconds > 0 or config.retention_max_sessions > 0):
        tasks.append(asyncio.create_task(_every(
            config.retention_interval_seconds, "retention",
            lambda: _apply_retention(store, config))))
    await _set_health(health_servicer, True)
    undo.pop_all()  # started: from here the RunningServer owns what was opened
    running = RunningServer(server, store, hub, config, health_servicer, port, tasks,
                            observability, lock, security.interceptors, readiness)
    build = build_info()
    log.info("serving on %s database=%s revision=%d durability=%s version=%s "
             "git_revision=%s", running.address, redacted(config.database), store.revision,
             config.durability, build.version, build.revision)
    log.info("metrics=%s reflection=%s readers=%d tracing=%s log_level=%s",
             f"{config.metrics_address.rsplit(':', 1)[0] or '127.0.0.1'}:"
             f"{running.metrics_port}" if config.metrics_address else "off",
             config.reflection, config.readers,
             "on" if observability.tracer is not None else "off", config.log_level)
    return running


def _offset_port(address: str, offset: int) -> str:
    """``address`` with its port moved up by ``offset`` (port 0 stays 0: any free port)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return address
    return f"{host}:{int(port) + offset}"


def _listen(server: grpc.aio.Server, address: str,
            credentials: grpc.ServerCredentials | None, reuseport: bool = False) -> int:
    """Bind ``address``; the bound port, or ``ListenError`` saying why it cannot be had.

    The OS is asked first (a plain bind, with the SO_REUSEADDR grpc sets too),
    because grpc's own failure says only "Failed to bind" after logging a
    C-level error line of its own.
    """
    reason = unbindable_reason(address, reuseport)
    if reason is not None:
        raise ListenError(address, reason)
    try:
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(address, unbindable_reason(address, reuseport)
                          or "grpc cannot bind it; choose another --address")
    return port


def unbindable_reason(address: str, reuseport: bool = False) -> str | None:
    """Why ``address`` (host:port) cannot be listened on, or None when a bind succeeds
    (beside the other workers' sockets, with ``reuseport``)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port_text.isdigit():
        return "it is not host:port; pass --address host:port"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((host, int(port_text)))
    except OSError as exc:
        return {errno.EADDRINUSE: "the address is already in use (another sessiond?); stop "
                                  "what holds it or choose another --address",
                errno.EADDRNOTAVAIL: "it is not an address of this machine; pass one of its "
                                     "addresses (or 0.0.0.0) to --address",
                errno.EACCES: "ports below 1024 need privileges; choose a higher port"}.get(
                    exc.errno or 0, f"{exc.strerror or exc}; choose another --address")
    return None


class ListenError(OSError):
    """The gRPC address cannot be bound; the message names the cause and the fix."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")


def _lock_database(config: ServerConfig) -> DatabaseLock | None:
    """Hold the SQLite file's server lock, so restore and import refuse to run beside us."""
    if postgres_url(config.database) is not None:
        return None
    return DatabaseLock(sqlite_path(config.database))


async def _apply_retention(store: Store, config: ServerConfig) -> None:
    """Retention for every tenant: the TTL applies to all sessions, and the cap is per tenant
    (each tenant keeps its own newest ``retention_max_sessions``; one tenant's traffic never
    evicts another's sessions)."""
    before = 0
    if config.retention_ttl_seconds > 0:
        before = config.clock() - int(config.retention_ttl_seconds * 1_000_000)
    for tenant in await store.tenants():
        scope = Scope(tenant=tenant)
        while True:
            count, more, _ = await store.purge_sessions(
                scope, before, config.retention_max_sessions, [], False, 1000)
            if count:
                log.info("retention removed %d sessions of tenant %s", count, tenant)
            if not more:
                break


class StartFailure(Exception):
    """``sessiond serve`` could not start; the message says why and what to do about it."""


def explain_start_failure(exc: BaseException, config: ServerConfig) -> str:
    """One line for an operator: what went wrong at start and the fix."""
    from .auth import InsecureExposure, KeyFileError
    from .maintenance import DatabaseInUse
    from .store import SchemaTooNew, Unavailable

    database = redacted(config.database)
    if isinstance(exc, InsecureExposure | ListenError | DatabaseInUse):
        return str(exc)  # these messages already name the fix
    if isinstance(exc, KeyFileError):
        return f"{exc}; fix the file, or the --api-keys-file / --tls-* setting that names it"
    if isinstance(exc, SchemaTooNew):
        return f"{exc}; run the newer sessiond, or point --database at another database"
    if isinstance(exc, Unavailable):
        return (f"{exc}; check that PostgreSQL is running and reachable and that --database"
                f" names it")
    if isinstance(exc, sqlite3.DatabaseError):
        return (f"cannot open the database {database}: {exc}; point --database at a sessiond"
                f" database (or a new file), or restore a backup")
    if isinstance(exc, ModuleNotFoundError) and exc.name in OPTIONAL_MODULES:
        extra = OPTIONAL_MODULES[exc.name]
        return f"{exc.name} is not installed; pip install 'sessiond[{extra}]'"
    if isinstance(exc, OSError) and exc.filename:
        return (f"cannot use {exc.filename}: {exc.strerror}; check --database (its directory"
                f" must be writable by this user)")
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return (f"cannot start: {type(exc).__name__}: {exc} (--log-level debug shows the "
            f"traceback)")


#: Modules of optional extras, by the extra that installs them.
OPTIONAL_MODULES = {"asyncpg": "postgres", "uvloop": "fast"}


def run(config: ServerConfig, replica: Replica | None = None,
        on_ready: Callable[[RunningServer], None] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit code.

    A failed start raises ``StartFailure`` (its cause the original error) after
    everything it started has been stopped. With ``workers`` other than 1 the
    supervisor serves instead. A standalone server drains on the first SIGTERM
    or SIGINT and exits at once (code 1) on a second: an operator pressing
    Ctrl-C twice means it. A supervised ``replica`` (one of its workers) stops
    on SIGTERM only, and a repeated SIGTERM does not cut its drain short (see
    :class:`Replica`).
    """
    if replica is None and config.workers != 1:
        from .supervisor import supervise

        return supervise(config)
    configure_logging(config.log_format, config.log_level)

    async def main() -> int:
        try:
            running = await start_server(config, replica)
        except Exception as exc:
            raise StartFailure(explain_start_failure(exc, config)) from exc
        if on_ready is not None:
            on_ready(running)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0
        supervised = replica is not None and replica.supervised

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals > 1 and supervised:
                log.debug("signal again while draining; the supervisor escalates")
            elif signals > 1:
                log.warning("second signal: exiting now")
                os._exit(1)
            stop.set()

        for sig in (signal.SIGTERM,) if supervised else (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await stop.wait()
        log.info("shutting down (grace %.1fs)", config.shutdown_grace_seconds)
        await running.stop()
        return 0

    if config.event_loop == "uvloop":
        try:
            import uvloop  # the `fast` extra
        except ModuleNotFoundError as exc:
            raise StartFailure(explain_start_failure(exc, config)) from exc
        return uvloop.run(main())
    return asyncio.run(main())
