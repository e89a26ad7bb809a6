"""Two ``sessiond serve`` replicas on one PostgreSQL database: one store, one revision order.

Writers on both replicas, watchers on both. Each watcher must see every
committed event, from either replica, exactly once and in revision order
(the validators of ``watch_validator``). One replica is SIGKILLed mid-run
and restarted; its watcher resumes from the last revision it saw + 1 and
misses nothing. A replay of the change log is the ground truth, and it holds
every acknowledged write at the revision its response named.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from conftest import create_postgres_database
from harness import OWN_SUBCHANNELS
from sessiond.v1 import (
    event_pb2,
    message_service_pb2,
    message_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)
from watch_validator import (
    DEFAULT_TIMEOUT,
    ChangeLog,
    WatchRecorder,
    WatchValidator,
    assert_same_events,
    user_message,
    watch_until,
)

pytestmark = pytest.mark.postgres

WRITERS_PER_REPLICA = 2
ACKS_PER_PHASE = 80


@dataclasses.dataclass
class Writes:
    """What the writers attempted and what the replicas acknowledged."""

    acked: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    unknown: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    acknowledged: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def ack(self, attempt: tuple[str, int], revision: int) -> None:
        self.acked[attempt] = revision
        self.acknowledged.set()


async def write_until_stopped(address: str, name: str, writes: Writes) -> None:
    """Create a session and append to it, repeatedly, until told to stop or a call fails."""
    async with grpc.aio.insecure_channel(address, options=OWN_SUBCHANNELS) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        messages = message_service_pb2_grpc.MessageServiceStub(channel)
        i = 0
        while not writes.stop.is_set():
            sid = f"{name}-{i}"
            i += 1
            attempt = (sid, event_pb2.EVENT_TYPE_SESSION_CREATED)
            try:
                created = await sessions.CreateSession(
                    session_service_pb2.CreateSessionRequest(session=session_pb2.Session(id=sid)))
                writes.ack(attempt, created.revision)
                attempt = (sid, event_pb2.EVENT_TYPE_MESSAGES_APPENDED)
                appended = await messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
                    session_id=sid, messages=[user_message(f"hello from {name}")]))
                writes.ack(attempt, appended.revision)
            except grpc.aio.AioRpcError as error:
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                        grpc.StatusCode.UNKNOWN), (error.code(), error.details())
                writes.unknown.add(attempt)
                return


async def wait_for_acks(writes: Writes, count: int) -> None:
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        while len(writes.acked) < count:
            writes.acknowledged.clear()
            await writes.acknowledged.wait()


async def test_two_replicas_deliver_every_event_once_in_order_across_a_kill(
        postgres_server: str, server_process: Any) -> None:
    url = await create_postgres_database(postgres_server)
    await two_replicas_deliver_every_event_once_in_order_across_a_kill(
        server_process(url), server_process(url))


async def two_replicas_deliver_every_event_once_in_order_across_a_kill(a: Any, b: Any) -> None:
    """Writers and watchers on replicas ``a`` and ``b`` (server processes); ``b`` is killed
    and restarted mid-run (also run over SQLite, in test_workers.py)."""
    writes = Writes()
    a_channel = grpc.aio.insecure_channel(a.address)
    a_stub = session_service_pb2_grpc.SessionServiceStub(a_channel)
    b_channel = grpc.aio.insecure_channel(b.address)
    b_stub = session_service_pb2_grpc.SessionServiceStub(b_channel)
    try:
        first = await a_stub.CreateSession(session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(id="first")))
        start = first.revision + 1
        async with WatchRecorder(a_stub, name="a", start_revision=start) as on_a, \
                WatchRecorder(b_stub, name="b-before-kill", start_revision=start) as b_before:
            await on_a.wait_created()
            await b_before.wait_created()
            a_writers = [asyncio.create_task(write_until_stopped(a.address, f"a{w}", writes))
                         for w in range(WRITERS_PER_REPLICA)]
            b_writers = [asyncio.create_task(write_until_stopped(b.address, f"b{w}", writes))
                         for w in range(WRITERS_PER_REPLICA)]
            await wait_for_acks(writes, ACKS_PER_PHASE)
            await b_before.wait_until(lambda s: bool(s.events), "events on b")

            b.kill()  # SIGKILL mid-stream, while both replicas take writes
            await asyncio.wait_for(asyncio.gather(*b_writers), DEFAULT_TIMEOUT)
            await b_before.wait_ended()
            assert b_before.stream.error is not None
            await wait_for_acks(writes, len(writes.acked) + ACKS_PER_PHASE // 2)  # a goes on

            b.restart()
            await b_channel.close()
            b_channel = grpc.aio.insecure_channel(b.address, options=OWN_SUBCHANNELS)
            b_stub = session_service_pb2_grpc.SessionServiceStub(b_channel)
            async with WatchRecorder(b_stub, name="b-after-restart",
                                     start_revision=b_before.stream.resume_revision) as b_after:
                await b_after.wait_created()
                b_writers = [asyncio.create_task(write_until_stopped(b.address, f"b{w}-again",
                                                                     writes))
                             for w in range(WRITERS_PER_REPLICA)]
                await wait_for_acks(writes, len(writes.acked) + ACKS_PER_PHASE)
                writes.stop.set()
                await asyncio.wait_for(asyncio.gather(*a_writers, *b_writers), DEFAULT_TIMEOUT)
                last = await b_stub.CreateSession(session_service_pb2.CreateSessionRequest(
                    session=session_pb2.Session(id="last")))
                writes.acked[("last", event_pb2.EVENT_TYPE_SESSION_CREATED)] = last.revision
                await on_a.wait_covered(last.revision)
                await b_after.wait_covered(last.revision)

        truth = await watch_until(a_stub, last.revision, name="truth-from-a",
                                  start_revision=start)
        truth_b = await watch_until(b_stub, last.revision, name="truth-from-b",
                                    start_revision=start)
    finally:
        await a_channel.close()
        await b_channel.close()

    expected = ChangeLog.from_events(truth.events)
    assert_same_events(truth_b.events, truth.events, "replay on b vs replay on a")
    WatchValidator(expected).validate(truth)
    WatchValidator(expected).validate(on_a.stream)
    WatchValidator(expected).validate(b_before.stream, b_after.stream)
    assert_same_events(on_a.stream.events, truth.events, "live on a vs ground truth")
    assert_same_events(b_before.stream.events + b_after.stream.events, truth.events,
                       "live on b, resumed across the kill, vs ground truth")
    # Every revision from start to the last is someone's write: no gap in the store.
    assert sorted({e.revision for e in truth.events}) == list(range(start, last.revision + 1))
    committed = {(e.session_id, e.type): e.revision for e in truth.events}
    for attempt, revision in writes.acked.items():
        assert committed.get(attempt) == revision, (attempt, revision, committed.get(attempt))
    unexplained = [key for key in committed if key not in writes.acked
                   and key not in writes.unknown]
    assert not unexplained, f"events of writes never attempted: {unexplained[:10]}"
    assert {sid.split("-")[0] for sid, _ in writes.acked} >= {"a0", "a1", "b0", "b1"}
