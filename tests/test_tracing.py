"""Optional OpenTelemetry tracing: off without OTEL_* configuration, one server span per RPC
when on, continuing the caller's trace. Skipped where the OpenTelemetry SDK is not installed
(it is not a dependency of sessiond)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from sessiond.v1 import session_pb2, session_service_pb2
from sessiond_server import observability

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def until(condition: Any, what: str) -> None:
    """Wait (bounded) for ``condition()``: a call that ended in an error is answered before
    the server's interceptor finishes with it, so its record may come a moment later."""
    for _ in range(2000):  # at most about 20 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_tracing_is_off_unless_otel_variables_name_an_exporter() -> None:
    assert observability.build_tracer({}) is None
    assert observability.build_tracer({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert observability.build_tracer({"OTEL_SDK_DISABLED": "true",
                                       "OTEL_TRACES_EXPORTER": "console"}) is None
    tracing = observability.build_tracer({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    tracing[1].shutdown()


async def test_each_rpc_is_a_server_span_in_the_callers_trace(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observability, "build_tracer",
                        lambda environ: (provider.get_tracer("test"), provider))
    server = await make_server()
    await server.sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="traced")), metadata=(("traceparent", TRACEPARENT),))
    with pytest.raises(grpc.aio.AioRpcError):
        await server.sessions.GetSession(session_service_pb2.GetSessionRequest(session_id="no"))
    await until(lambda: len(exporter.get_finished_spans()) == 2, "two finished spans")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    created = spans["sessiond.v1.SessionService/CreateSession"]
    assert format(created.context.trace_id, "032x") == TRACE_ID
    assert created.attributes["rpc.system"] == "grpc"
    assert created.attributes["rpc.method"] == "CreateSession"
    assert created.attributes["rpc.grpc.status_code"] == 0
    missing = spans["sessiond.v1.SessionService/GetSession"]
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status.is_ok  # the caller's mistake, not a server error
