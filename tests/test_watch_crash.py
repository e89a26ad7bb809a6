"""WatchSessions across a crash: kill -9 mid-stream, restart, resume.

A real ``sessiond serve`` subprocess takes writes from several concurrent
writers while a watcher records. The process is killed with SIGKILL (twice),
restarted on the same database, and the watcher resumes from the last
revision it saw + 1. A final replay from the first watched revision is the
ground truth. The union of the recorded streams must equal it exactly (no
duplicate, no gap); every acknowledged write must be in it at the revision
its response named; and anything else in it must be a write whose outcome
the crash hid (at most the one write each writer had in flight).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any

import grpc
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
    RecordedStream,
    WatchRecorder,
    WatchValidator,
    assert_same_events,
    describe_key,
    event_key,
    user_message,
    watch_until,
)

WRITERS = 4
ROUNDS = 2
ACKS_BEFORE_KILL = 120


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@dataclasses.dataclass
class Writes:
    """What the writers attempted and what the server acknowledged."""

    # (session_id, event type) -> acknowledged revision
    acked: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    # Writes whose outcome the crash hid.
    unknown: set[tuple[str, int]] = dataclasses.field(default_factory=set)


async def write_until_failure(
    channel: grpc.aio.Channel, writer: int, round_: int, writes: Writes
) -> None:
    """Create a session, append to it, repeat; stop at the first failure."""
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    messages = message_service_pb2_grpc.MessageServiceStub(channel)
    for i in range(100_000):
        sid = f"r{round_}-w{writer}-{i}"
        attempt = (sid, event_pb2.EVENT_TYPE_SESSION_CREATED)
        try:
            created = await sessions.CreateSession(
                session_service_pb2.CreateSessionRequest(session=session_pb2.Session(id=sid))
            )
            writes.acked[attempt] = created.revision
            attempt = (sid, event_pb2.EVENT_TYPE_MESSAGES_APPENDED)
            appended = await messages.AppendMessages(
                message_service_pb2.AppendMessagesRequest(
                    session_id=sid, messages=[user_message(f"hello {i}", id=f"{sid}-m")]
                )
            )
            writes.acked[attempt] = appended.revision
        except grpc.aio.AioRpcError as error:
            assert error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.INTERNAL,
            ), (error.code(), error.details())
            writes.unknown.add(attempt)
            return


async def test_resume_after_kill_delivers_each_committed_event_once(server_process: Any) -> None:
    process = server_process()
    writes = Writes()
    streams: list[RecordedStream] = []
    resume_at = 0
    for round_ in range(ROUNDS):
        async with grpc.aio.insecure_channel(process.address, options=OWN_SUBCHANNELS) as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            async with WatchRecorder(
                stub, name=f"before-kill-{round_}", start_revision=resume_at
            ) as recorder:
                await recorder.wait_created()
                writers = [
                    asyncio.create_task(write_until_failure(channel, w, round_, writes))
                    for w in range(WRITERS)
                ]
                acked_before = len(writes.acked)
                await recorder.wait_until(
                    lambda s, n=acked_before: (
                        len(writes.acked) >= n + ACKS_BEFORE_KILL and bool(s.events)
                    ),
                    f"{ACKS_BEFORE_KILL} acknowledged writes",
                )
                await maybe_await(process.kill())  # SIGKILL, mid-stream
                await asyncio.wait_for(asyncio.gather(*writers), DEFAULT_TIMEOUT)
                await recorder.wait_ended()
        stream = recorder.stream
        assert stream.error is not None, f"{stream.name} did not end with the process"
        streams.append(stream)
        resume_at = stream.resume_revision
        await maybe_await(process.restart())

    async with grpc.aio.insecure_channel(process.address, options=OWN_SUBCHANNELS) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        marker = await stub.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(id="marker")),
            wait_for_ready=True,
            timeout=DEFAULT_TIMEOUT,
        )
        writes.acked[("marker", event_pb2.EVENT_TYPE_SESSION_CREATED)] = marker.revision
        streams.append(
            await watch_until(stub, marker.revision, name="after-restart", start_revision=resume_at)
        )
        first = streams[0].first_covered
        assert first is not None
        truth = await watch_until(stub, marker.revision, name="ground-truth", start_revision=first)

    # The recorded streams, resumed across two crashes, are one exact stream.
    WatchValidator(ChangeLog.from_events(truth.events)).validate(*streams)
    WatchValidator(ChangeLog.from_events(truth.events)).validate(truth)
    assert_same_events(
        [e for s in streams for e in s.events], truth.events, "resumed streams vs ground truth"
    )

    # The ground truth holds every acknowledged write at its revision ...
    committed = {(e.session_id, e.type): e.revision for e in truth.events}
    for attempt, revision in writes.acked.items():
        if revision < first:
            continue  # acknowledged before the first watch began
        assert committed.get(attempt) == revision, (
            f"acknowledged {attempt} at revision {revision}, ground truth has "
            f"{committed.get(attempt)}"
        )
    # ... and nothing else but writes whose acknowledgement the crash lost.
    unacknowledged = [
        describe_key(event_key(e))
        for e in truth.events
        if (e.session_id, e.type) not in writes.acked
        and (e.session_id, e.type) not in writes.unknown
    ]
    assert not unacknowledged, f"events of writes never attempted: {unacknowledged}"
    # Each writer stops at its first failure: one hidden outcome per writer and crash.
    assert len(writes.unknown) == WRITERS * ROUNDS
