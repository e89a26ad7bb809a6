"""WatchSessions bounded in bytes: responses, fragments of large revisions, events, the hub.

A session can carry about 87 KB (a 64 KiB goal, 64 labels, a name), so a few
dozen of them in one revision, or in consecutive revisions, used to make a
response larger than the 4 MiB a gRPC client accepts by default; every resume
from there failed again. These tests write such revisions through the public
API and read them over a real channel: raw, checked by the watch validator
(which knows fragments and the response bound), through the Python client
(which joins fragments), and through ``sessiond watch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from typing import Any

import grpc
import pytest
import sessiond
from harness import append, assistant, create_session
from sessiond.aio import watch_async
from sessiond.v1 import event_pb2, message_pb2, session_pb2, session_service_pb2
from sessiond.watching import Backoff, WatchCursor
from test_cli import LINE_TIMEOUT, read_line, start_cli
from watch_validator import (
    EVENTS,
    INITIAL,
    MAX_RESPONSE_BYTES,
    ChangeLogWriter,
    RecordedStream,
    WatchRecorder,
    WatchValidator,
    events_bytes,
)

GOAL_BYTES = 64 << 10  # the default max_text_field_bytes
RUNTIME = "runtime-a"


def big_session_fields(tag: str) -> dict[str, Any]:
    """Session fields at the default limits: about 87 KB of goal, labels and name."""
    return {
        "goal": (tag * GOAL_BYTES)[:GOAL_BYTES],
        "display_name": "n" * 1024,
        "labels": {f"{i:063d}": "v" * 256 for i in range(64)},
        "runtime_instance": RUNTIME,
    }


async def create_big_sessions(writer: ChangeLogWriter, count: int) -> None:
    for i in range(count):
        await writer.create(f"big-{i:03d}", **big_session_fields(str(i % 10)))


def split_revisions(stream: RecordedStream) -> dict[int, int]:
    """Revision -> number of parts, for the revisions sent in more than one response."""
    parts: dict[int, int] = {}
    for response in stream.responses:
        if response.type == EVENTS and response.fragment:
            parts[response.revision] = parts.get(response.revision, 1) + 1
    return parts


async def test_a_revision_larger_than_the_bound_arrives_in_marked_fragments(make_server):
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 60)  # one revision of about 5 MB once reconciled
    async with WatchRecorder(server.sessions, start_revision=1) as recorder:
        reconciled = await writer.reconcile(RUNTIME)
        assert len(reconciled.marked_session_ids) == 60
        await recorder.wait_covered(reconciled.revision)
    WatchValidator(writer.log).validate(recorder.stream)
    assert split_revisions(recorder.stream)[reconciled.revision] >= 5
    delivered = [e for e in recorder.stream.events if e.revision == reconciled.revision]
    assert sorted(e.session_id for e in delivered) == sorted(reconciled.marked_session_ids)


async def test_a_stream_resumed_between_fragments_gets_the_revision_again_from_its_first_part(
        make_server):
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 30)
    reconciled = await writer.reconcile(RUNTIME)
    async with WatchRecorder(server.sessions, name="cut", start_revision=1) as first:
        await first.wait_until(
            lambda s: any(r.fragment for r in s.responses), "the first fragment")
    cut = first.stream
    # Cut right after the first fragment, as a dropped connection would.
    first_fragment = next(i for i, r in enumerate(cut.responses) if r.fragment)
    del cut.responses[first_fragment + 1:]
    assert cut.last_covered == reconciled.revision - 1
    async with WatchRecorder(server.sessions, name="resumed",
                             start_revision=cut.resume_revision) as second:
        await second.wait_covered(reconciled.revision)
    WatchValidator(writer.log).validate(cut, second.stream)
    assert [e.revision for e in cut.events] == sorted(
        e.revision for e in cut.events if e.revision < reconciled.revision)
    assert len([e for e in second.stream.events if e.revision == reconciled.revision]) == 30


async def test_many_large_revisions_are_packed_within_the_bound(make_server):
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    # 70 revisions of about 87 KB: 64 of them used to share one 5.6 MB response.
    await create_big_sessions(writer, 70)
    stream = (await _record_until(server, writer.last_revision, start_revision=1)).stream
    WatchValidator(writer.log).validate(stream)
    events = [r for r in stream.responses if r.type == EVENTS]
    assert not any(r.fragment for r in events)
    assert all(events_bytes(r) <= MAX_RESPONSE_BYTES for r in events)
    assert len(events) >= 6


async def test_the_initial_state_is_sent_in_responses_within_the_bound(make_server):
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 60)
    async with WatchRecorder(server.sessions, include_initial=True) as recorder:
        await recorder.wait_until(lambda s: s.initial_complete is not None, "INITIAL_COMPLETE")
    initial = [r for r in recorder.stream.responses if r.type == INITIAL]
    WatchValidator().validate(recorder.stream)
    assert len(initial) >= 5
    assert not any(r.fragment for r in initial)
    assert sorted(e.session_id for e in recorder.stream.initial_events) == [
        f"big-{i:03d}" for i in range(60)]


async def test_the_initial_state_comes_from_one_snapshot_however_slowly_it_is_read(
        make_server):
    """The server reads the initial state a page of sessions at a time (one page in
    memory), every page from one snapshot: writes made while a client is part way
    through it are not in it; they follow INITIAL_COMPLETE as events."""
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 150)  # about 13 MB: several pages and responses
    request = session_service_pb2.WatchSessionsRequest(include_initial=True)
    stream = RecordedStream(request=request)
    call = server.sessions.WatchSessions(request)
    try:
        async for response in call:
            stream.responses.append(response)
            if response.type == INITIAL:
                break
        # The server is inside the initial state (its snapshot began after CREATED).
        await writer.delete("big-149")
        await writer.create("late", **big_session_fields("z"))
        async for response in call:
            stream.responses.append(response)
            if stream.last_covered >= writer.log.last_revision:
                break
    finally:
        call.cancel()
    WatchValidator(writer.log).validate(stream)
    assert sorted(e.session_id for e in stream.initial_events) == [
        f"big-{i:03d}" for i in range(150)]
    assert [e.session_id for e in stream.events] == ["big-149", "late"]
    assert len([r for r in stream.responses if r.type == INITIAL]) >= 10


async def test_the_response_bound_is_a_setting(make_server):
    server = await make_server(watch_response_bytes=200_000)
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 10)
    reconciled = await writer.reconcile(RUNTIME)
    stream = (await _record_until(server, reconciled.revision, start_revision=1)).stream
    WatchValidator(writer.log, max_response_bytes=200_000).validate(stream)
    assert split_revisions(stream)[reconciled.revision] >= 5


@pytest.mark.parametrize("sessions", [10, 30])
async def test_a_revision_read_from_the_log_in_pieces_is_sent_as_if_read_whole(
        make_server, sessions):
    """No buffer and a 100 KB read-ahead: the reconcile revision is read an event or so at a
    time. Under the response bound it still arrives as one response; over it, in fragments."""
    server = await make_server(watch_buffer_bytes=0, watch_read_ahead_bytes=100_000)
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, sessions)
    reconciled = await writer.reconcile(RUNTIME)
    stream = (await _record_until(server, reconciled.revision, start_revision=1)).stream
    WatchValidator(writer.log).validate(stream)
    parts = [r for r in stream.responses if r.type == EVENTS and r.revision == reconciled.revision]
    whole = events_bytes(parts[0]) if len(parts) == 1 else sum(events_bytes(p) for p in parts)
    if whole <= MAX_RESPONSE_BYTES:
        assert len(parts) == 1 and not parts[0].fragment
    else:
        assert len(parts) > 1 and all(p.fragment for p in parts[:-1])
    assert sorted(e.session_id for p in parts for e in p.events
                  if e.revision == reconciled.revision) == sorted(reconciled.marked_session_ids)


async def test_the_python_client_joins_fragments_into_one_revision(make_server):
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 60)
    reconciled = await writer.reconcile(RUNTIME)
    async with sessiond.AsyncClient(server.address) as client:
        stream = client.watch(start_revision=reconciled.revision)
        try:
            created = await asyncio.wait_for(anext(stream), 30)
            joined = await asyncio.wait_for(anext(stream), 30)
        finally:
            await stream.aclose()
    assert created.type == session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
    assert (joined.type, joined.revision, joined.fragment) == (EVENTS, reconciled.revision, False)
    assert sorted(e.session_id for e in joined.events) == sorted(reconciled.marked_session_ids)
    assert joined.ByteSize() > 4 << 20  # more than one response may carry


async def test_the_python_client_ends_a_watch_whose_revision_passes_its_join_bound(make_server):
    server = await make_server()
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 20)  # about 1.7 MB: two or more fragments
    reconciled = await writer.reconcile(RUNTIME)
    bound = 1 << 20
    async with sessiond.AsyncClient(server.address) as client:
        stream = client.watch(start_revision=reconciled.revision, max_revision_bytes=bound)
        try:
            created = await asyncio.wait_for(anext(stream), 30)
            with pytest.raises(sessiond.ResourceExhausted) as caught:
                await asyncio.wait_for(anext(stream), 30)
        finally:
            await stream.aclose()
        # The same revision under a bound it fits in arrives joined.
        stream = client.watch(start_revision=reconciled.revision, max_revision_bytes=4 << 20)
        try:
            await asyncio.wait_for(anext(stream), 30)
            joined = await asyncio.wait_for(anext(stream), 30)
        finally:
            await stream.aclose()
    assert created.type == session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"revision {reconciled.revision} exceeds max_revision_bytes ({bound} bytes" in str(
        caught.value)
    assert (joined.revision, joined.fragment) == (reconciled.revision, False)
    assert sum(e.ByteSize() for e in joined.events) > bound


async def test_sessiond_watch_prints_a_revision_larger_than_a_response(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 60)
    reconciled = await writer.reconcile(RUNTIME)
    process = await start_cli("--address", server.address, "watch", "--start-revision", "1",
                              "--event", "status_changed")
    lines: list[list[str]] = []
    try:
        while len(lines) < 60:
            lines.append((await read_line(process)).split())
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), LINE_TIMEOUT)
    assert {int(line[0]) for line in lines} == {reconciled.revision}
    assert sorted(line[4] for line in lines) == sorted(reconciled.marked_session_ids)
    assert code == 0


async def test_an_event_cuts_tool_calls_like_content(server: Any) -> None:
    await create_session(server.sessions, "s1")
    calls = [message_pb2.ToolCall(id=f"call-{i}", name="search", arguments_json="{" + "x" * 30_000)
             for i in range(20)]
    message = assistant("done", tool_calls=0)
    message.tool_calls.extend(calls)
    async with WatchRecorder(server.sessions) as recorder:
        await recorder.wait_created()
        answer = await append(server.messages, "s1", message)
        await recorder.wait_covered(answer.revision)
    (event,) = recorder.stream.events
    (carried,) = event.messages
    assert event.messages_truncated
    assert len(carried.tool_calls) == 16
    assert all(len(c.arguments_json.encode()) == 512 for c in carried.tool_calls)
    assert [c.id for c in carried.tool_calls] == [f"call-{i}" for i in range(16)]
    assert len(answer.messages[0].tool_calls) == 20  # the stored message is whole


async def test_the_largest_event_under_the_default_limits_fits_in_one_response(server: Any):
    """The worst case the proto states: a session at every limit and 16 messages at theirs."""
    session = session_pb2.Session(id="w" * 256, **big_session_fields("g"))
    for name in ("room_id", "sender_id", "agent", "model", "owner_id", "dataset_id"):
        setattr(session, name, "i" * 256)
    session.channel = "c" + "." + "a" * 126
    await server.sessions.CreateSession(session_service_pb2.CreateSessionRequest(session=session))

    def worst_message(i: int) -> message_pb2.Message:
        m = message_pb2.Message(
            id=f"{i:0256d}", role=message_pb2.ROLE_ASSISTANT, content="c" * 5000,
            reasoning="r" * 5000, name="n" * 1024, provider_response_id="p" * 1024,
            metadata={f"{k:063d}": "v" * 256 for k in range(64)})
        m.tool_calls.extend(message_pb2.ToolCall(id="i" * 300, name="n" * 300,
                                                 arguments_json="a" * 2000) for _ in range(20))
        return m

    async with WatchRecorder(server.sessions) as recorder:
        await recorder.wait_created()
        answer = await append(server.messages, session.id, *[worst_message(i) for i in range(16)])
        await recorder.wait_covered(answer.revision)
    (event,) = recorder.stream.events
    assert event.type == event_pb2.EVENT_TYPE_MESSAGES_APPENDED
    assert len(event.messages) == 16 and event.messages_truncated
    assert event.session.ByteSize() < 100_000  # the proto says: about 95 KB at most
    assert event.ByteSize() < 900_000  # about 900 KB at most: under the 1 MiB bound


async def test_the_hub_buffer_is_bounded_in_bytes(make_server):
    budget = 200_000
    server = await make_server(watch_buffer_bytes=budget)
    writer = ChangeLogWriter.for_server(server)
    hub = server.running.hub
    sizes = random.Random(12).choices([100, 5_000, 30_000, 60_000], k=60)
    for i, size in enumerate(sizes):
        await writer.create(f"s{i:02d}", goal="g" * size)
        assert hub.buffered_bytes <= budget, f"after write {i}: {hub.buffered_bytes} bytes"
    assert hub.buffered_bytes > 0
    # Revisions that left the buffer are read from the change log, in order.
    stream = (await _record_until(server, writer.last_revision, start_revision=1)).stream
    WatchValidator(writer.log).validate(stream)


async def _record_until(server: Any, revision: int, **request: Any) -> WatchRecorder:
    async with WatchRecorder(server.sessions, **request) as recorder:
        await recorder.wait_covered(revision)
    return recorder


async def test_a_raw_stub_with_the_default_receive_limit_reads_a_huge_revision(server: Any):
    """The raw stub, with gRPC's default 4 MiB receive limit, reads every response."""
    writer = ChangeLogWriter.for_server(server)
    await create_big_sessions(writer, 60)
    reconciled = await writer.reconcile(RUNTIME)
    call = server.sessions.WatchSessions(
        session_service_pb2.WatchSessionsRequest(start_revision=1))
    seen = 0
    try:
        async for response in call:
            if response.type == EVENTS and not response.fragment:
                seen = response.revision
            if seen >= reconciled.revision:
                break
    except grpc.aio.AioRpcError as error:
        pytest.fail(f"the watch failed: {error.code().name} {error.details()}")
    finally:
        with contextlib.suppress(Exception):
            call.cancel()
    assert seen == reconciled.revision


# The client's state machine, on canned responses: joining, and a drop between fragments.


def events_response(revision: int, *session_ids: str, fragment: bool = False
                    ) -> session_service_pb2.WatchSessionsResponse:
    return session_service_pb2.WatchSessionsResponse(
        type=EVENTS, revision=revision, fragment=fragment,
        events=[event_pb2.SessionEvent(type=event_pb2.EVENT_TYPE_STATUS_CHANGED,
                                       revision=revision, session_id=s) for s in session_ids])


def test_the_cursor_delivers_a_split_revision_once_whole_and_resumes_after_it() -> None:
    cursor = WatchCursor(session_service_pb2.WatchSessionsRequest(start_revision=7))
    assert cursor.accept(events_response(7, "a", "b", fragment=True)) is None
    assert cursor.accept(events_response(7, "c", fragment=True)) is None
    assert cursor.request().start_revision == 7  # nothing of revision 7 delivered yet
    cursor.accept(events_response(7, "a", "b", fragment=True))  # resent from its first part
    whole = cursor.accept(events_response(7, "c", "d"))
    assert whole is not None and not whole.fragment
    assert [e.session_id for e in whole.events] == ["a", "b", "c", "d"]
    assert cursor.request().start_revision == 8


def test_the_cursor_refuses_a_split_revision_past_its_join_bound_and_can_start_again() -> None:
    part = events_response(7, "a", "b", fragment=True)
    last = events_response(7, "c")
    part_bytes = sum(e.ByteSize() for e in part.events)
    whole_bytes = part_bytes * 2 + sum(e.ByteSize() for e in last.events)
    fits = WatchCursor(session_service_pb2.WatchSessionsRequest(start_revision=7),
                       max_revision_bytes=whole_bytes)
    assert fits.accept(part) is None and fits.accept(part) is None
    assert fits.accept(last) is not None  # exactly at the bound: joined

    cursor = WatchCursor(session_service_pb2.WatchSessionsRequest(start_revision=7),
                         max_revision_bytes=whole_bytes - 1)
    assert cursor.accept(part) is None and cursor.accept(part) is None
    with pytest.raises(sessiond.ResourceExhausted, match="revision 7 exceeds max_revision_bytes"):
        cursor.accept(last)
    # The buffer was let go: a new stream's parts are counted from zero.
    assert cursor.request().start_revision == 7
    assert cursor.accept(part) is None
    whole = cursor.accept(events_response(7, "c"))
    assert whole is not None and [e.session_id for e in whole.events] == ["a", "b", "c"]


async def test_the_watch_loop_delivers_a_revision_cut_between_fragments_once() -> None:
    connections = [
        [created_response(6), events_response(7, "a", fragment=True)],  # then the drop
        [created_response(7), events_response(7, "a", fragment=True),
         events_response(7, "b"), events_response(8, "c")],
    ]
    requests: list[int] = []

    async def open_stream(request: Any) -> Any:
        requests.append(request.start_revision)
        for response in connections.pop(0) if connections else []:
            yield response
        if not connections:
            await asyncio.Event().wait()

    async def no_sleep(seconds: float) -> None:
        return None

    stream = watch_async(open_stream, session_service_pb2.WatchSessionsRequest(start_revision=7),
                         backoff=Backoff(initial=0.0), sleep=no_sleep)
    delivered: list[tuple[int, str]] = []
    async for response in stream:
        delivered += [(e.revision, e.session_id) for e in response.events]
        if len(delivered) >= 3:
            break
    await stream.aclose()
    assert requests == [7, 7]
    assert delivered == [(7, "a"), (7, "b"), (8, "c")]


def created_response(revision: int) -> session_service_pb2.WatchSessionsResponse:
    return session_service_pb2.WatchSessionsResponse(
        type=session_service_pb2.WATCH_RESPONSE_TYPE_CREATED, revision=revision)
