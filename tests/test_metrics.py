"""Prometheus metrics: scraped over HTTP after a known workload, with the counts it implies.

Each server has its own registry, so the many servers of one test run never share counters.
The scrape is parsed with prometheus_client's own parser: what a Prometheus server would see.
"""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    session_pb2,
    session_service_pb2,
)
from sessiond_server.observability import METRICS, CursorTrackingHub

SQLITE = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)
SESSION_SERVICE = "sessiond.v1.SessionService"
MESSAGE_SERVICE = "sessiond.v1.MessageService"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(condition: Any, what: str) -> None:
    """Wait (bounded) for ``condition()``: a call that ended in an error is answered before
    the server's interceptor finishes with it, so its record may come a moment later."""
    for _ in range(2000):  # at most about 20 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def message(content: str, message_id: str = "") -> message_pb2.Message:
    return message_pb2.Message(id=message_id, role=message_pb2.ROLE_USER, content=content)


@SQLITE
async def test_a_workload_shows_up_in_the_scraped_metrics(make_server: Any) -> None:
    server = await make_server(metrics_address="127.0.0.1:0")
    assert server.running.metrics_port > 0
    sessions, messages = server.sessions, server.messages
    await sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="idle")))
    server.clock.advance(3600)  # "idle" is now abandoned (threshold 1800 s)
    for sid in ("a", "done"):
        await sessions.CreateSession(session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(id=sid)))
    await messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="a", messages=[message("one", "m1"), message("two", "m2")]))
    server.clock.advance(1)
    await messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="a", messages=[message("two", "m2"), message("three", "m3")]))  # m2: retry
    await messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="done", messages=[message("x"), message("y"), message("z")]))
    await sessions.EndSession(session_service_pb2.EndSessionRequest(
        session_id="done", status=session_pb2.SESSION_STATUS_COMPLETED))
    with pytest.raises(grpc.aio.AioRpcError):
        await sessions.GetSession(session_service_pb2.GetSessionRequest(session_id="missing"))

    observability = server.running.observability
    await until(lambda: observability.rpc_count() == 8, "eight finished RPCs")

    # One watcher, read up to the latest revision, so it is caught up.
    watch = sessions.WatchSessions(session_service_pb2.WatchSessionsRequest(start_revision=1))
    latest = server.store.revision
    async with asyncio.timeout(20):
        async for response in watch:
            if response.events and response.events[-1].revision >= latest:
                break

    samples = await asyncio.to_thread(scrape, server.running.metrics_port)
    rpcs = "sessiond_rpcs_total"
    assert value(samples, rpcs, service=SESSION_SERVICE, method="CreateSession", code="OK") == 3
    assert value(samples, rpcs, service=MESSAGE_SERVICE, method="AppendMessages", code="OK") == 3
    assert value(samples, rpcs, service=SESSION_SERVICE, method="GetSession",
                 code="NOT_FOUND") == 1
    assert value(samples, "sessiond_rpc_duration_seconds_count", service=SESSION_SERVICE,
                 method="CreateSession") == 3
    assert value(samples, "sessiond_rpcs_in_flight", service=SESSION_SERVICE,
                 method="WatchSessions") == 1
    assert value(samples, "sessiond_messages_appended_total") == 6  # the retried m2 is not new
    assert value(samples, "sessiond_sessions", status="active") == 1
    assert value(samples, "sessiond_sessions", status="abandoned") == 1
    assert value(samples, "sessiond_sessions", status="completed") == 1
    assert value(samples, "sessiond_sessions", status="failed") == 0
    assert value(samples, "sessiond_watchers") == 1
    assert value(samples, "sessiond_watch_lag_max_revisions") == 0
    assert value(samples, "sessiond_watch_lag_revisions_gcount") == 1
    revision, compacted = server.store.revision, server.store.compacted_revision
    assert value(samples, "sessiond_revision") == revision
    assert value(samples, "sessiond_changelog_revisions") == revision - compacted
    assert value(samples, "sessiond_database_size_bytes", file="database") > 0
    batches, writes = server.store.writer_stats
    assert value(samples, "sessiond_write_batch_writes_count") == batches
    assert value(samples, "sessiond_write_batch_writes_sum") == writes
    assert value(samples, "sessiond_write_commit_seconds_count") == batches
    watch.cancel()

    # Everything the README's table documents is exported (and nothing else named sessiond_).
    names = {name for name, _ in samples}
    for metric, (kind, _) in METRICS.items():
        suffix = {"histogram": "_count", "gaugehistogram": "_gcount"}.get(kind, "")
        assert metric + suffix in names, metric


async def test_metrics_are_off_unless_an_address_is_set(make_server: Any) -> None:
    server = await make_server()
    assert server.running.metrics_port == 0


async def test_servers_in_one_process_keep_their_own_counters(make_server: Any) -> None:
    first = await make_server(metrics_address="127.0.0.1:0")
    second = await make_server(metrics_address="127.0.0.1:0")
    await first.sessions.CreateSession(session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(id="only-on-first")))
    on_first = await asyncio.to_thread(scrape, first.running.metrics_port)
    on_second = await asyncio.to_thread(scrape, second.running.metrics_port)
    labels = {"service": SESSION_SERVICE, "method": "CreateSession", "code": "OK"}
    assert value(on_first, "sessiond_rpcs_total", **labels) == 1
    assert value(on_second, "sessiond_rpcs_total", **labels) == 0


class StubStore:
    """Just enough of a store for the hub: a revision that tests move by hand."""

    revision = 0
    compacted_revision = 0

    def add_listener(self, listener: Any) -> None:
        pass

    async def read_changes(self, from_revision: int, limit: int) -> list[Any]:
        return []


async def test_watch_lag_is_what_each_open_stream_has_still_to_read() -> None:
    store = StubStore()
    hub = CursorTrackingHub(store)  # type: ignore[arg-type]
    store.revision = 100
    gate = asyncio.Event()

    async def watcher(cursor: int) -> None:
        await hub.changes_from(cursor, 10)
        await gate.wait()

    behind = asyncio.create_task(watcher(41))  # has read up to 40: 60 behind
    caught_up = asyncio.create_task(watcher(101))
    await asyncio.sleep(0)
    assert sorted(hub.lags()) == [0, 60]
    gate.set()
    await asyncio.gather(behind, caught_up)
    assert hub.lags() == []  # a finished stream is no longer counted
