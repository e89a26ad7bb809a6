"""What an operator sees of a running server: metrics, RPC logs, traces and the database ping.

Why one module: the same interceptor measures every RPC for Prometheus, writes
its debug log line and (optionally) its OpenTelemetry span, so the three never
disagree about a method's name, status code or duration.

Guarantees:

* Metrics live in a per-server ``CollectorRegistry`` (tests start many servers
  in one process) and are served on their own HTTP port only when
  ``metrics_address`` is set.
* Gauges that describe stored data (sessions by status, database size, change
  log length) are computed at scrape time on the scraping thread, from a
  short-lived read-only SQLite connection: the event loop never waits for a
  scrape, and no write happens for the sake of a metric.
* Log lines never carry message text, request bodies or metadata values (which
  may hold credentials); an RPC line has its method, status code, duration and
  peer only.
* Tracing is off unless the OpenTelemetry SDK is importable *and* the standard
  ``OTEL_*`` variables name an exporter; it is never a hard dependency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import importlib
import inspect
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from sessiond.v1 import message_service_pb2, session_pb2
from sessiond.version import build_info

from .store import SessionStore
from .watch import LogReader, Step, WatchHub

log = logging.getLogger("sessiond")
rpc_log = logging.getLogger("sessiond.rpc")

# Seconds; unary calls are mostly sub-millisecond to tens of milliseconds,
# and a watch stream's "duration" is its whole lifetime.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0, 60.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 5.0)
LAG_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000)

# Codes that mean the server failed (logged as warnings with their cause);
# the others are the caller's business and only reach the debug line.
SERVER_FAULT_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED,
})

STATUS_WORDS = {
    session_pb2.SESSION_STATUS_ACTIVE: "active",
    session_pb2.SESSION_STATUS_COMPLETED: "completed",
    session_pb2.SESSION_STATUS_FAILED: "failed",
    session_pb2.SESSION_STATUS_CANCELLED: "cancelled",
    session_pb2.SESSION_STATUS_UNKNOWN: "unknown",
}

#: Every metric the server exports, with its type and help. The README's
#: metrics table is checked against this (tests/test_docs.py).
METRICS: dict[str, tuple[str, str]] = {
    "sessiond_rpcs_total": (
        "counter", "RPCs finished, by service, method and gRPC status code"),
    "sessiond_rpcs_in_flight": ("gauge", "RPCs being handled now, by service and method"),
    "sessiond_rpc_duration_seconds": (
        "histogram", "RPC handling time by service and method (a stream's whole lifetime)"),
    "sessiond_messages_appended_total": (
        "counter", "messages stored by AppendMessages (retries of stored ids not counted)"),
    "sessiond_sessions": ("gauge", "stored sessions by effective status"),
    "sessiond_watchers": ("gauge", "open WatchSessions streams"),
    "sessiond_watch_lag_revisions": (
        "gaugehistogram", "open watch streams by how many revisions they are behind"),
    "sessiond_watch_lag_max_revisions": (
        "gauge", "revisions the furthest-behind watch stream has still to read"),
    "sessiond_write_batch_writes": (
        "histogram", "writes committed per write transaction (group commit)"),
    "sessiond_write_commit_seconds": (
        "histogram", "write transaction time, BEGIN IMMEDIATE to COMMIT included"),
    "sessiond_revision": ("gauge", "latest committed store revision"),
    "sessiond_compacted_revision": ("gauge", "highest revision removed from the change log"),
    "sessiond_changelog_revisions": (
        "gauge", "revisions the change log holds (revision - compacted_revision)"),
    "sessiond_database_size_bytes": (
        "gauge", "size of the SQLite database files, by file (database, wal)"),
    "sessiond_build_info": (
        "gauge", "always 1; the labels say which sessiond runs (version, git revision)"),
}


# Logging


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, error."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def configure_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send the process's logs to ``stream`` (stderr) in the chosen format and level."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's own chatter stays at warnings even at debug level.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))


# Health


async def ping_database(store: SessionStore) -> None:
    """Prove the database answers a read and can start a write; raise if not.

    The read goes through a reader connection (an empty change-log range);
    the write is ``compact(0, 0)``, which with both bounds off removes nothing
    and takes no revision, but does run one BEGIN IMMEDIATE ... COMMIT on the
    writer thread. The server reports SERVING only after this returns.
    """
    await store.read_changes(store.revision + 1, 1)
    await store.compact(0, 0)


# Watch lag


class CursorTrackingHub(WatchHub):
    """The watch hub, remembering where each watch stream reads (for the lag metric).

    Each WatchSessions stream runs in its own task and asks the hub for the
    next revision it needs (``changes_from``, ``wait_for``); that revision is
    its cursor. Lag is ``store.revision - (cursor - 1)``. Entries leave when
    the stream's task ends. Reads from the scrape thread copy the dict.
    """

    def __init__(self, store: SessionStore, buffer_bytes: int = 16 << 20) -> None:
        super().__init__(store, buffer_bytes)
        self._store_ref = store
        self.cursors: dict[asyncio.Task[Any], int] = {}

    def _note(self, revision: int) -> None:
        task = asyncio.current_task()
        if task is None:
            return
        if task not in self.cursors:
            task.add_done_callback(self._forget)
        self.cursors[task] = revision

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self.cursors.pop(task, None)

    async def changes_from(self, revision: int, max_bytes: int, log: LogReader | None = None,
                           *, index: int = 0) -> Step:
        self._note(revision)
        return await super().changes_from(revision, max_bytes, log, index=index)

    async def wait_for(self, revision: int, seconds: float | None) -> bool:
        self._note(revision)
        return await super().wait_for(revision, seconds)

    def lags(self) -> list[int]:
        """Revisions each open stream has still to read (0 when caught up)."""
        current = self._store_ref.revision
        return [max(0, current - (cursor - 1)) for task, cursor in list(self.cursors.items())
                if not task.done()]


# Scrape-time gauges


class StoreCollector(Collector):
    """Gauges read at scrape time: sessions by status, sizes, revisions, watchers."""

    def __init__(self, store: SessionStore, hub: WatchHub, database: Path | None,
                 abandoned_after_seconds: float, clock: Callable[[], int]) -> None:
        self._store = store
        self._hub = hub
        self._database = database
        self._abandoned_after = int(abandoned_after_seconds * 1_000_000)
        self._clock = clock

    def describe(self) -> Iterable[Any]:
        return []  # collected on demand; nothing to describe ahead of time

    def collect(self) -> Iterable[Any]:
        revision = self._store.revision
        compacted = self._store.compacted_revision
        for name, value in (("sessiond_revision", revision),
                            ("sessiond_compacted_revision", compacted),
                            ("sessiond_changelog_revisions", max(0, revision - compacted)),
                            ("sessiond_watchers", self._hub.watcher_count)):
            yield GaugeMetricFamily(name, METRICS[name][1], value=value)
        if self._database is not None:  # SQLite; PostgreSQL is measured by its own exporter
            sizes = GaugeMetricFamily("sessiond_database_size_bytes",
                                      METRICS["sessiond_database_size_bytes"][1],
                                      labels=["file"])
            for label, path in (("database", self._database),
                                ("wal", Path(f"{self._database}-wal"))):
                with contextlib.suppress(OSError):
                    sizes.add_metric([label], path.stat().st_size)
            yield sizes
        lags = self._hub.lags() if isinstance(self._hub, CursorTrackingHub) else []
        buckets = [(str(le), sum(1 for lag in lags if lag <= le)) for le in LAG_BUCKETS]
        buckets.append(("+Inf", len(lags)))
        yield GaugeHistogramMetricFamily(
            "sessiond_watch_lag_revisions", METRICS["sessiond_watch_lag_revisions"][1],
            buckets=buckets, gsum_value=sum(lags))
        yield GaugeMetricFamily("sessiond_watch_lag_max_revisions",
                                METRICS["sessiond_watch_lag_max_revisions"][1],
                                value=max(lags, default=0))
        counts = self._sessions_by_status() if self._database is not None else None
        if counts is not None:
            family = GaugeMetricFamily("sessiond_sessions", METRICS["sessiond_sessions"][1],
                                       labels=["status"])
            for word, count in counts.items():
                family.add_metric([word], count)
            yield family

    def _sessions_by_status(self) -> dict[str, int] | None:
        """Counts per effective status: one covering-index scan, no table reads."""
        cutoff = self._clock() - self._abandoned_after
        counts = dict.fromkeys(
            ("active", "abandoned", "completed", "failed", "cancelled", "unknown"), 0)
        try:
            conn = sqlite3.connect(f"file:{self._database}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error as exc:
            log.warning("metrics: cannot open %s: %s", self._database, exc)
            return None
        try:
            found = conn.execute(
                "SELECT status, last_activity_at < ?, count(*) FROM sessions"
                " INDEXED BY sessions_by_status GROUP BY 1, 2", (cutoff,)).fetchall()
        except sqlite3.Error as exc:
            log.warning("metrics: cannot count sessions: %s", exc)
            return None
        finally:
            conn.close()
        for status, idle, count in found:
            if status == session_pb2.SESSION_STATUS_ACTIVE and idle:
                counts["abandoned"] += count
            else:
                counts[STATUS_WORDS.get(status, "unknown")] += count
        return counts


# Tracing


def build_tracer(environ: Mapping[str, str]) -> tuple[Any, Any] | None:
    """(tracer, provider) when the OpenTelemetry SDK is installed and OTEL_* names an exporter.

    The provider is the server's own (not the process-wide one), so servers
    started side by side in tests do not share or replace each other's.
    """
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT")
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or exporter_name == "none":
        return None
    if not exporter_name and not endpoint:
        return None
    # Imported by name: OpenTelemetry is optional and has no place in the
    # type-checked dependency set.
    try:
        resources = importlib.import_module("opentelemetry.sdk.resources")
        sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
        export = importlib.import_module("opentelemetry.sdk.trace.export")
    except ImportError:
        log.info("OTEL_* is set but the OpenTelemetry SDK is not installed: tracing is off")
        return None
    exporter: Any
    if exporter_name == "console":
        exporter = export.ConsoleSpanExporter()
    else:
        otlp: Any = None
        for module in ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                       "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
            with contextlib.suppress(ImportError):
                otlp = importlib.import_module(module)
                break
        if otlp is None:
            log.warning("OTEL_* asks for OTLP but no OTLP exporter package is installed: "
                        "tracing is off")
            return None
        exporter = otlp.OTLPSpanExporter()
    provider = sdk_trace.TracerProvider(resource=resources.Resource.create(
        {"service.name": environ.get("OTEL_SERVICE_NAME", "sessiond")}))
    provider.add_span_processor(export.BatchSpanProcessor(exporter))
    log.info("tracing RPCs with OpenTelemetry (%s exporter)", exporter_name or "otlp")
    return provider.get_tracer("sessiond"), provider


class _Span:
    """An OpenTelemetry server span for one RPC, or nothing when tracing is off."""

    def __init__(self, tracer: Any | None, service: str, method: str,
                 metadata: Iterable[tuple[str, Any]] | None) -> None:
        self._span: Any = None
        if tracer is None:
            return
        propagate = importlib.import_module("opentelemetry.propagate")
        trace = importlib.import_module("opentelemetry.trace")
        carrier = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
        self._span = tracer.start_span(
            f"{service}/{method}", context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})

    def end(self, code: grpc.StatusCode) -> None:
        if self._span is None:
            return
        trace = importlib.import_module("opentelemetry.trace")
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_FAULT_CODES:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
        self._span.end()


# The interceptor


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio keeps the raw integer once the call aborted
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    return grpc.StatusCode.OK


def _new_messages(response: Any) -> int:
    """How many messages an AppendMessagesResponse stored (retried ids excluded).

    New messages take the sequence numbers after the previous last_seq and the
    write's time, which is the session's last_activity_at; a retried message
    kept its older seq and time.
    """
    if not isinstance(response, message_service_pb2.AppendMessagesResponse) or \
            not response.revision:
        return 0
    last_seq = response.session.last_seq
    written_at = response.session.last_activity_at
    floor = last_seq - len(response.messages)
    return sum(1 for m in response.messages if m.seq > floor and m.created_at == written_at)


class RpcObserver(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts, times, logs and traces every RPC; changes no request or response.

    Once ``shutting_down`` is set, calls ending UNAVAILABLE or CANCELLED are
    the shutdown doing its job (watch streams told to resume elsewhere, new
    calls refused while draining): they are counted for one summary line
    (``shutdown_summary``) instead of a warning each.
    """

    def __init__(self, metrics: Metrics, tracer: Any | None = None) -> None:
        self._metrics = metrics
        self._tracer = tracer
        self.shutting_down = False
        self._ended_by_shutdown: collections.Counter[str] = collections.Counter()
        self._refused_while_draining = 0

    def shutdown_summary(self) -> str | None:
        """What the shutdown ended, in one line; None when it ended nothing."""
        ended = sum(self._ended_by_shutdown.values())
        if not ended and not self._refused_while_draining:
            return None
        methods = ", ".join(f"{method} {count}"
                            for method, count in sorted(self._ended_by_shutdown.items()))
        return (f"shutdown ended {ended} open calls ({methods or 'none'}) and refused "
                f"{self._refused_while_draining} new calls while draining; clients resume "
                f"on their own")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:  # the handler, wrapped; None for a method nobody serves
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        service, _, method = full.lstrip("/").rpartition("/")
        metadata = handler_call_details.invocation_metadata
        observe = self._observe
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                async with observe(service, method, metadata, context) as outcome:
                    response = await inner_uu(request, context)
                    outcome.append(response)
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            if inspect.isasyncgenfunction(inner_us):
                async def unary_stream_gen(request: Any, context: Any) -> AsyncIterator[Any]:
                    async with observe(service, method, metadata, context):
                        async for response in inner_us(request, context):
                            yield response

                return grpc.unary_stream_rpc_method_handler(
                    unary_stream_gen, handler.request_deserializer, handler.response_serializer)

            async def unary_stream(request: Any, context: Any) -> Any:
                async with observe(service, method, metadata, context):
                    return await inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream
            if inspect.isasyncgenfunction(inner_ss):
                async def stream_stream_gen(requests: Any, context: Any) -> AsyncIterator[Any]:
                    async with observe(service, method, metadata, context):
                        async for response in inner_ss(requests, context):
                            yield response

                return grpc.stream_stream_rpc_method_handler(
                    stream_stream_gen, handler.request_deserializer,
                    handler.response_serializer)

            async def stream_stream(requests: Any, context: Any) -> Any:
                async with observe(service, method, metadata, context):
                    return await inner_ss(requests, context)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer)
        return handler  # client streaming: sessiond serves none

    @contextlib.asynccontextmanager
    async def _observe(self, service: str, method: str, metadata: Any,
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[list[Any]]:
        m = self._metrics
        in_flight = m.rpcs_in_flight.labels(service, method)
        in_flight.inc()
        span = _Span(self._tracer, service, method, metadata)
        # Read from the context only while the call is alive: a stream closed
        # late (its generator finalised after the call ended) must not touch it.
        peer = context.peer()
        began_before_shutdown = not self.shutting_down
        started = time.perf_counter()
        outcome: list[Any] = []
        code = grpc.StatusCode.OK
        details = ""
        failure: BaseException | None = None
        try:
            yield outcome
            code = _code_of(context)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = _code_of(context)
            details = str(getattr(context, "details", lambda: "")() or "")
            raise
        except Exception as exc:
            code, failure = grpc.StatusCode.UNKNOWN, exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            m.rpcs.labels(service, method, code.name).inc()
            m.rpc_seconds.labels(service, method).observe(elapsed)
            if outcome and code == grpc.StatusCode.OK:
                appended = _new_messages(outcome[0])
                if appended:
                    m.messages_appended.inc(appended)
            span.end(code)
            by_shutdown = (self.shutting_down and failure is None and code in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED))
            if by_shutdown and began_before_shutdown:
                self._ended_by_shutdown[method] += 1
            elif by_shutdown:
                self._refused_while_draining += 1
            self._log(service, method, code, elapsed, peer, details, failure,
                      expected=by_shutdown)

    @staticmethod
    def _log(service: str, method: str, code: grpc.StatusCode, elapsed: float, peer: str,
             details: str, failure: BaseException | None, *, expected: bool = False) -> None:
        fields = {"rpc_method": f"{service}/{method}", "rpc_code": code.name,
                  "duration_ms": round(elapsed * 1000, 3), "peer": peer}
        if failure is not None:
            rpc_log.error("rpc %s/%s failed: %s", service, method, failure,
                          exc_info=failure, extra=fields)
        elif code in SERVER_FAULT_CODES and not expected:
            rpc_log.warning("rpc %s/%s ended %s: %s", service, method, code.name, details,
                            extra=fields)
        elif rpc_log.isEnabledFor(logging.DEBUG):
            rpc_log.debug("rpc %s/%s %s %.3fms peer=%s", service, method, code.name,
                          elapsed * 1000, peer, extra=fields)


# Assembly


class Metrics:
    """The server's own metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def text(name: str) -> str:
            return METRICS[name][1]

        self.registry = registry
        # prometheus_client adds the _total suffix to counters itself.
        self.rpcs = Counter("sessiond_rpcs", text("sessiond_rpcs_total"),
                            ["service", "method", "code"], registry=registry)
        self.rpcs_in_flight = Gauge("sessiond_rpcs_in_flight", text("sessiond_rpcs_in_flight"),
                                    ["service", "method"], registry=registry)
        self.rpc_seconds = Histogram(
            "sessiond_rpc_duration_seconds", text("sessiond_rpc_duration_seconds"),
            ["service", "method"], buckets=RPC_BUCKETS, registry=registry)
        self.messages_appended = Counter(
            "sessiond_messages_appended", text("sessiond_messages_appended_total"),
            registry=registry)
        self.batch_writes = Histogram(
            "sessiond_write_batch_writes", text("sessiond_write_batch_writes"),
            buckets=BATCH_BUCKETS, registry=registry)
        self.commit_seconds = Histogram(
            "sessiond_write_commit_seconds", text("sessiond_write_commit_seconds"),
            buckets=COMMIT_BUCKETS, registry=registry)
        build = build_info()
        Gauge("sessiond_build_info", text("sessiond_build_info"), ["version", "revision"],
              registry=registry).labels(build.version, build.revision).set(1)

    def observe_batch(self, writes: int, seconds: float) -> None:
        """The store writer's hook: one committed write transaction."""
        self.batch_writes.observe(writes)
        self.commit_seconds.observe(seconds)


def parse_metrics_address(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``port``; no host means loopback (127.0.0.1)."""
    text = address.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {address!r} is not host:port")
    return host, int(port)


class Observability:
    """Metrics, the RPC interceptor and the metrics HTTP endpoint of one server."""

    def __init__(self, store: SessionStore, hub: WatchHub, *, database: Path | None,
                 abandoned_after_seconds: float, clock: Callable[[], int],
                 environ: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = Metrics(self.registry)
        self.registry.register(StoreCollector(store, hub, database, abandoned_after_seconds,
                                              clock))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, RSS, open fds
        tracing = build_tracer(os.environ if environ is None else environ)
        self.tracer: Any = tracing[0] if tracing else None
        self._tracer_provider: Any = tracing[1] if tracing else None
        self.interceptor = RpcObserver(self.metrics, self.tracer)
        writer = getattr(store, "_writer", None)  # SQLite's single writer (see sqlite_writer)
        if writer is not None and hasattr(writer, "batch_observers"):
            writer.batch_observers.append(self.metrics.observe_batch)
        self._http: Any = None
        self._thread: threading.Thread | None = None
        self.metrics_port = 0

    def serve_metrics(self, address: str) -> int:
        """Serve /metrics on ``address``; returns the bound port."""
        host, port = parse_metrics_address(address)
        try:
            self._http, self._thread = start_http_server(port, addr=host,
                                                         registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {address}: {exc.strerror}; "
                          f"choose another --metrics-address") from exc
        self.metrics_port = int(self._http.server_port)
        return self.metrics_port

    def rpc_count(self) -> int:
        """RPCs finished since start (for the shutdown summary)."""
        total = 0.0
        for family in self.metrics.rpcs.collect():
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return int(total)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
            self._tracer_provider = None
