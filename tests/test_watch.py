"""WatchSessions, live: what a subscriber sees while writes happen.

Black-box tests over the public gRPC API. Every stream is checked by
``WatchValidator`` against the change log of the writes (taken from each
write's response revision), so each test also re-checks etcd's six watch
guarantees on its own workload. Resumption, replay and compaction live in
test_watch_resume.py; random workloads in test_watch_property.py; a crash in
test_watch_crash.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)
from sessiond_server.config import Limits
from watch_validator import (
    CREATED,
    DEFAULT_TIMEOUT,
    EVENTS,
    INITIAL,
    INITIAL_COMPLETE,
    PROGRESS,
    ChangeLog,
    ChangeLogWriter,
    ExpectedEvent,
    RecordedStream,
    WatchRecorder,
    WatchValidator,
    assert_same_events,
    describe_response,
    filter_matches,
    session_diff,
    watch_error,
)

ACTIVE = session_pb2.SESSION_STATUS_ACTIVE
COMPLETED = session_pb2.SESSION_STATUS_COMPLETED
FAILED = session_pb2.SESSION_STATUS_FAILED


async def get_session(server: Any, session_id: str) -> session_pb2.Session:
    response = await server.sessions.GetSession(
        session_service_pb2.GetSessionRequest(session_id=session_id)
    )
    return response.session


async def list_all_sessions(server: Any) -> dict[str, session_pb2.Session]:
    sessions: dict[str, session_pb2.Session] = {}
    token = ""
    while True:
        page = await server.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(page_size=500, page_token=token)
        )
        sessions.update((s.id, s) for s in page.sessions)
        token = page.next_page_token
        if not token:
            return sessions


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the server reaches asynchronously (bounded, not timed).

    Polling, because the conditions (task counts, hub registries) have no
    event to wait on."""
    try:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(what) from None


async def wait_nudging_clock(
    server: Any, recorder: WatchRecorder, predicate: Callable[[RecordedStream], bool], what: str
) -> None:
    """Wait for a progress-driven condition, advancing the fake clock as well,
    whichever clock the server's progress timer follows."""

    async def nudge() -> None:
        while True:
            await asyncio.sleep(0.02)
            server.clock.advance(0.1)

    nudger = asyncio.create_task(nudge())
    try:
        await recorder.wait_until(predicate, what)
    finally:
        nudger.cancel()
        await asyncio.gather(nudger, return_exceptions=True)


# --------------------------------------------------------------------------
# CREATED


async def test_first_response_is_created_at_the_current_revision(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("s1")
    await writer.append("s1", "hello")
    async with WatchRecorder(server.sessions, name="w") as recorder:
        created = await recorder.wait_created()
    first = recorder.stream.responses[0]
    assert first.type == CREATED, describe_response(first)
    assert created.revision == writer.last_revision
    assert created.compacted_revision == 0
    assert not created.events
    assert created.HasField("time")


async def test_start_revision_zero_delivers_only_writes_after_created(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("before")
    async with WatchRecorder(server.sessions, name="w") as recorder:
        created = await recorder.wait_created()
        await writer.create("after")
        await writer.append("after", "hi")
        await recorder.wait_covered(writer.last_revision)
    assert all(e.revision > created.revision for e in recorder.stream.events)
    WatchValidator(writer.log).validate(recorder.stream)


async def test_start_revision_in_the_future_waits_for_that_revision(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("s")
    start = writer.last_revision + 3
    async with WatchRecorder(server.sessions, name="future", start_revision=start) as recorder:
        await recorder.wait_created()
        for i in range(5):
            await writer.append("s", f"m{i}")
        await recorder.wait_covered(writer.last_revision)
    assert recorder.stream.event_revisions == [r for r in writer.log.revisions if r >= start]
    WatchValidator(writer.log).validate(recorder.stream)


# --------------------------------------------------------------------------
# One event per write type, with the session after the change.


@dataclasses.dataclass
class Expected:
    """What the event(s) at one revision must carry."""

    revision: int
    # session id -> snapshot after the change (None: a deletion, no snapshot).
    snapshots: dict[str, session_pb2.Session | None]
    event_type: int
    messages: list[message_pb2.Message] | None = None
    removed_count: int | None = None


Scenario = Callable[[ChangeLogWriter, Any], Awaitable[Expected]]


async def scenario_create(w: ChangeLogWriter, server: Any) -> Expected:
    r = await w.create(
        "a",
        agent="planner",
        channel="discord.clamps",
        owner_id="alice",
        labels={"team": "red"},
        display_name="A",
        model="m1",
    )
    assert r.created
    return Expected(r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_SESSION_CREATED)


async def scenario_update(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    r = await w.update("a", ["display_name", "labels"], display_name="B", labels={"k": "v"})
    return Expected(r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_SESSION_UPDATED)


async def scenario_end(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    r = await w.end("a", FAILED, reason="boom")
    return Expected(r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_SESSION_ENDED)


async def scenario_delete(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    await w.append("a", "x", "y")
    r = await w.delete("a")
    return Expected(r.revision, {"a": None}, event_pb2.EVENT_TYPE_SESSION_DELETED)


async def scenario_runtime_state(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    r = await w.set_runtime_state("a", session_pb2.RUNTIME_STATE_RUNNING, turn_id="t1")
    return Expected(r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_RUNTIME_STATE_CHANGED)


async def scenario_append(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    r = await w.append(
        "a",
        message_pb2.Message(role=message_pb2.ROLE_USER, content="hi", id="m-1"),
        message_pb2.Message(
            role=message_pb2.ROLE_ASSISTANT,
            content="hello",
            tool_calls=[message_pb2.ToolCall(id="c1", name="ls", arguments_json="{}")],
        ),
    )
    return Expected(
        r.revision,
        {"a": r.session},
        event_pb2.EVENT_TYPE_MESSAGES_APPENDED,
        messages=list(r.messages),
    )


async def scenario_pop(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    await w.append("a", "one", "two")
    r = await w.pop("a")
    return Expected(
        r.revision,
        {"a": r.session},
        event_pb2.EVENT_TYPE_MESSAGE_POPPED,
        messages=[r.message],
        removed_count=1,
    )


async def scenario_update_last(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    await w.append(
        "a",
        message_pb2.Message(
            role=message_pb2.ROLE_ASSISTANT,
            content="",
            status=message_pb2.MESSAGE_STATUS_IN_PROGRESS,
        ),
    )
    r = await w.update_last("a", "streamed reply")
    return Expected(
        r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_MESSAGE_UPDATED, messages=[r.message]
    )


async def scenario_clear(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    await w.append("a", "one", "two", "three")
    r = await w.clear("a")
    assert r.removed_count == 3
    return Expected(
        r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_MESSAGES_CLEARED, removed_count=3
    )


async def scenario_usage(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    r = await w.record_usage(
        "a", model="m1", prompt_tokens=100, completion_tokens=20, cost_micros=7
    )
    # RecordUsage does not return the session: read it (no write in between).
    return Expected(
        r.revision, {"a": await get_session(server, "a")}, event_pb2.EVENT_TYPE_USAGE_RECORDED
    )


async def scenario_reconcile(w: ChangeLogWriter, server: Any) -> Expected:
    for sid in ("a", "b", "c"):
        await w.create(sid, runtime_instance="ri-1")
    await w.create("other", runtime_instance="ri-2")
    r = await w.reconcile("ri-1", keep=["c"])
    assert sorted(r.marked_session_ids) == ["a", "b"]
    return Expected(
        r.revision,
        {sid: await get_session(server, sid) for sid in ("a", "b")},
        event_pb2.EVENT_TYPE_STATUS_CHANGED,
    )


async def scenario_purge(w: ChangeLogWriter, server: Any) -> Expected:
    for sid in ("old1", "old2", "new"):
        await w.create(sid)
        server.clock.advance(10)
    r = await w.purge(["old1", "old2"], keep_newest=1)
    return Expected(r.revision, {"old1": None, "old2": None}, event_pb2.EVENT_TYPE_SESSION_PURGED)


async def scenario_touch_existing(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    server.clock.advance(5)
    r = await w.touch("a")
    assert not r.created
    return Expected(r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_SESSION_UPDATED)


async def scenario_touch_new(w: ChangeLogWriter, server: Any) -> Expected:
    r = await w.touch("a", agent="planner")
    assert r.created
    return Expected(r.revision, {"a": r.session}, event_pb2.EVENT_TYPE_SESSION_CREATED)


async def scenario_fork(w: ChangeLogWriter, server: Any) -> Expected:
    await w.create("a")
    await w.append("a", "one", "two", "three")
    r = await w.fork("a", "f", up_to_seq=2)
    assert r.session.parent_id == "a" and r.session.message_count == 2
    return Expected(r.revision, {"f": r.session}, event_pb2.EVENT_TYPE_SESSION_CREATED)


SCENARIOS: dict[str, Scenario] = {
    "create": scenario_create,
    "update": scenario_update,
    "end": scenario_end,
    "delete": scenario_delete,
    "runtime_state": scenario_runtime_state,
    "append": scenario_append,
    "pop": scenario_pop,
    "update_last": scenario_update_last,
    "clear": scenario_clear,
    "usage": scenario_usage,
    "reconcile": scenario_reconcile,
    "purge": scenario_purge,
    "touch_existing": scenario_touch_existing,
    "touch_new": scenario_touch_new,
    "fork": scenario_fork,
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_each_write_delivers_its_event_with_the_session_after_the_change(
    server: Any, scenario: Scenario
) -> None:
    writer = ChangeLogWriter.for_server(server)
    async with WatchRecorder(server.sessions, name="live") as recorder:
        await recorder.wait_created()
        expected = await scenario(writer, server)
        await recorder.wait_covered(writer.last_revision)
    stream = recorder.stream
    WatchValidator(writer.log).validate(stream)

    events = [e for e in stream.events if e.revision == expected.revision]
    by_session = {e.session_id: e for e in events}
    assert sorted(by_session) == sorted(expected.snapshots), [
        describe_response(r) for r in stream.responses
    ]
    for session_id, snapshot in expected.snapshots.items():
        event = by_session[session_id]
        assert event.type == expected.event_type, event_pb2.EventType.Name(event.type)
        assert event.HasField("time")
        if snapshot is None:
            assert not event.HasField("session")
            continue
        assert event.session.revision == expected.revision, (
            f"snapshot revision {event.session.revision}, event revision {expected.revision}"
        )
        assert event.session == snapshot, session_diff(event.session, snapshot)
        if expected.messages is not None:
            assert list(event.messages) == expected.messages
            assert not event.messages_truncated
        if expected.removed_count is not None:
            assert event.removed_count == expected.removed_count


# --------------------------------------------------------------------------
# Message payloads are bounded.


async def test_large_message_content_is_cut_and_flagged_truncated(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("a")
    big = "x" * 10_000
    multibyte = "é" * 6_000  # 12,000 bytes: the cut must keep valid UTF-8
    async with WatchRecorder(server.sessions, name="live") as recorder:
        await recorder.wait_created()
        small = await writer.append("a", "short")
        large = await writer.append(
            "a",
            message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, content=big, reasoning=big),
            message_pb2.Message(role=message_pb2.ROLE_USER, content=multibyte),
        )
        await recorder.wait_covered(writer.last_revision)
    WatchValidator(writer.log).validate(recorder.stream)
    by_revision = {e.revision: e for e in recorder.stream.events}

    small_event = by_revision[small.revision]
    assert not small_event.messages_truncated
    assert list(small_event.messages) == list(small.messages)

    large_event = by_revision[large.revision]
    assert large_event.messages_truncated
    assert [m.seq for m in large_event.messages] == [m.seq for m in large.messages]
    for got, stored in zip(large_event.messages, large.messages, strict=True):
        for field in ("content", "reasoning"):
            text, full = getattr(got, field), getattr(stored, field)
            assert len(text.encode()) <= 4096, f"{field} is {len(text.encode())} bytes"
            assert full.startswith(text), f"{field} is not a prefix of the stored text"
            if len(full.encode()) > 4096:
                assert text, f"{field} cut to nothing"


async def test_more_than_sixteen_messages_are_capped_and_flagged_truncated(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("a")
    async with WatchRecorder(server.sessions, name="live") as recorder:
        await recorder.wait_created()
        appended = await writer.append("a", *[f"m{i}" for i in range(20)])
        await recorder.wait_covered(writer.last_revision)
    WatchValidator(writer.log).validate(recorder.stream)
    (event,) = [e for e in recorder.stream.events if e.revision == appended.revision]
    assert event.messages_truncated
    assert 1 <= len(event.messages) <= 16, len(event.messages)
    stored = {m.seq: m for m in appended.messages}
    seqs = [m.seq for m in event.messages]
    assert seqs == sorted(seqs)
    for message in event.messages:
        assert message == stored[message.seq]


# --------------------------------------------------------------------------
# Filters: one workload, the unfiltered stream is the ground truth.


async def filter_workload(w: ChangeLogWriter, server: Any) -> None:
    await w.create(
        "a",
        owner_id="alice",
        agent="planner",
        channel="discord.clamps",
        labels={"team": "red", "env": "prod"},
    )
    await w.create("b", owner_id="bob", agent="coder", channel="discord", labels={"team": "blue"})
    await w.create("c", owner_id="alice", agent="coder", channel="cli", labels={"team": "red"})
    await w.create("d", owner_id="carol", agent="planner", channel="slack.x")
    await w.create("e", owner_id="carol", agent="coder", channel="discordant")
    await w.append("a", "hello")
    await w.append("b", "hi", "there")
    await w.update("c", ["labels"], labels={"team": "red", "env": "prod"})
    await w.end("b", COMPLETED)
    await w.set_runtime_state("c", session_pb2.RUNTIME_STATE_RUNNING, turn_id="t")
    await w.record_usage("a")
    await w.delete("d")
    await w.update("e", ["owner_id"], owner_id="alice")
    await w.end("a", FAILED)
    await w.touch("c")
    await w.append("e", "x")


FILTERS: dict[str, session_service_pb2.WatchFilter] = {
    "session_ids": session_service_pb2.WatchFilter(session_ids=["a", "d"]),
    "owner_ids": session_service_pb2.WatchFilter(owner_ids=["alice"]),
    "agents": session_service_pb2.WatchFilter(agents=["coder"]),
    "channel_type_with_aliases": session_service_pb2.WatchFilter(channels=["discord."]),
    "channels_exact": session_service_pb2.WatchFilter(channels=["cli", "slack.x"]),
    "statuses": session_service_pb2.WatchFilter(statuses=[COMPLETED, FAILED]),
    "labels_one_pair": session_service_pb2.WatchFilter(labels={"team": "red"}),
    "labels_every_pair": session_service_pb2.WatchFilter(labels={"team": "red", "env": "prod"}),
    "event_types": session_service_pb2.WatchFilter(
        event_types=[event_pb2.EVENT_TYPE_MESSAGES_APPENDED, event_pb2.EVENT_TYPE_SESSION_DELETED]
    ),
    "owner_and_event_type": session_service_pb2.WatchFilter(
        owner_ids=["alice"], event_types=[event_pb2.EVENT_TYPE_SESSION_ENDED]
    ),
    "owner_or_owner": session_service_pb2.WatchFilter(owner_ids=["bob", "carol"]),
}


@pytest.mark.parametrize("watch_filter", FILTERS.values(), ids=FILTERS.keys())
async def test_filtered_watch_delivers_exactly_the_matching_events(
    server: Any, watch_filter: session_service_pb2.WatchFilter
) -> None:
    writer = ChangeLogWriter.for_server(server)
    async with (
        WatchRecorder(server.sessions, name="all") as everything,
        WatchRecorder(
            server.sessions, name="filtered", filter=watch_filter, progress_interval_ms=50
        ) as filtered,
    ):
        await everything.wait_created()
        await filtered.wait_created()
        await filter_workload(writer, server)
        await everything.wait_covered(writer.last_revision)
        # The filtered stream vouches for the last revision by an event or,
        # when the last writes do not match, by a PROGRESS.
        await wait_nudging_clock(
            server,
            filtered,
            lambda s: s.last_covered >= writer.last_revision,
            f"the filtered stream to cover {writer.last_revision}",
        )
    WatchValidator(writer.log).validate(everything.stream)
    truth = ChangeLog.from_events(everything.stream.events).filtered(
        lambda e: filter_matches(watch_filter, e)
    )
    WatchValidator(truth).validate(filtered.stream)
    want = [
        e for e in everything.stream.events if filter_matches(watch_filter, ExpectedEvent.of(e))
    ]
    assert_same_events(filtered.stream.events, want, "filtered stream")


async def test_deletions_pass_field_filters_but_not_other_session_ids(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("a", owner_id="alice")
    await writer.create("b", owner_id="bob")
    async with (
        WatchRecorder(
            server.sessions,
            name="owner",
            filter=session_service_pb2.WatchFilter(owner_ids=["alice"]),
            progress_interval_ms=50,
        ) as by_owner,
        WatchRecorder(
            server.sessions,
            name="ids",
            filter=session_service_pb2.WatchFilter(session_ids=["a"]),
            progress_interval_ms=50,
        ) as by_id,
    ):
        await by_owner.wait_created()
        await by_id.wait_created()
        deleted_b = await writer.delete("b")
        deleted_a = await writer.delete("a")
        for recorder in (by_owner, by_id):
            await wait_nudging_clock(
                server, recorder, lambda s: s.last_covered >= deleted_a.revision, "the deletions"
            )
    owner_keys = [(e.revision, e.session_id) for e in by_owner.stream.events]
    id_keys = [(e.revision, e.session_id) for e in by_id.stream.events]
    assert owner_keys == [(deleted_b.revision, "b"), (deleted_a.revision, "a")]
    assert id_keys == [(deleted_a.revision, "a")]


@pytest.mark.parametrize(
    "fields",
    [
        {"progress_interval_ms": 10},
        {"progress_interval_ms": 3_600_001},
        {"include_initial": True, "start_revision": 1},
        {
            "filter": session_service_pb2.WatchFilter(
                statuses=[session_pb2.SESSION_STATUS_UNSPECIFIED]
            )
        },
    ],
    ids=[
        "progress_too_short",
        "progress_too_long",
        "initial_with_start_revision",
        "unspecified_status",
    ],
)
async def test_invalid_watch_request_is_invalid_argument(
    server: Any, fields: dict[str, Any]
) -> None:
    error, responses = await watch_error(server.sessions, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert not [r for r in responses if r.type != CREATED]


# --------------------------------------------------------------------------
# include_initial: list-then-watch in one call.


async def test_include_initial_sends_matching_sessions_then_initial_complete(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("a", owner_id="alice")
    await writer.create("b", owner_id="alice")
    await writer.create("c", owner_id="bob")
    await writer.end("b", COMPLETED)
    await writer.append("a", "hello")
    read_at = writer.last_revision
    async with WatchRecorder(
        server.sessions,
        name="initial",
        include_initial=True,
        filter=session_service_pb2.WatchFilter(owner_ids=["alice"]),
    ) as recorder:
        await recorder.wait_until(lambda s: s.initial_complete is not None, "INITIAL_COMPLETE")
        after = await writer.append("a", "more")
        await writer.append("c", "not alice")
        await recorder.wait_covered(after.revision)
    stream = recorder.stream
    types = [r.type for r in stream.responses]
    assert types[0] == CREATED
    complete_at = types.index(INITIAL_COMPLETE)
    assert set(types[1:complete_at]) <= {INITIAL}
    complete = stream.initial_complete
    assert complete is not None and complete.revision == read_at
    initial = {e.session_id: e for e in stream.initial_events}
    assert sorted(initial) == ["a", "b"]
    for session_id, event in initial.items():
        assert event.type == event_pb2.EVENT_TYPE_INITIAL
        snapshot = await get_session(server, session_id) if session_id == "b" else None
        if snapshot is not None:
            assert event.session == snapshot, session_diff(event.session, snapshot)
        assert event.session.revision <= read_at
    assert [(e.revision, e.session_id) for e in stream.events] == [(after.revision, "a")]
    WatchValidator(writer.log.filtered(lambda e: e.session_id in ("a", "b"))).validate(stream)


async def test_include_initial_on_an_empty_store_sends_only_initial_complete(server: Any) -> None:
    async with WatchRecorder(server.sessions, name="initial", include_initial=True) as recorder:
        await recorder.wait_until(lambda s: s.initial_complete is not None, "INITIAL_COMPLETE")
    types = [r.type for r in recorder.stream.responses]
    assert types[:2] == [CREATED, INITIAL_COMPLETE]
    assert recorder.stream.initial_events == []


async def test_list_then_watch_under_concurrent_writes_has_no_gap_or_duplicate(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    ids = [f"s{i:02d}" for i in range(20)]
    for sid in ids:
        await writer.create(sid)

    async def keep_writing() -> None:
        for i in range(150):
            sid = ids[i % len(ids)]
            if i % 37 == 36:
                await writer.delete(sid)
                await writer.create(sid)
            else:
                await writer.append(sid, f"m{i}")

    writes = asyncio.create_task(keep_writing())
    try:
        async with WatchRecorder(server.sessions, name="initial", include_initial=True) as recorder:
            await recorder.wait_until(lambda s: s.initial_complete is not None, "INITIAL_COMPLETE")
            await asyncio.wait_for(writes, DEFAULT_TIMEOUT)
            await recorder.wait_covered(writer.last_revision)
    finally:
        writes.cancel()
        await asyncio.gather(writes, return_exceptions=True)
    stream = recorder.stream
    complete = stream.initial_complete
    assert complete is not None
    read_at = complete.revision
    WatchValidator(writer.log).validate(stream)

    # The INITIAL snapshots are the state at read_at: each session present
    # then, at the revision of its last change up to read_at.
    last_change: dict[str, int] = {}
    alive: set[str] = set()
    for revision in writer.log.revisions:
        if revision > read_at:
            break
        for event in writer.log.events_at(revision):
            last_change[event.session_id] = revision
            if event.type == event_pb2.EVENT_TYPE_SESSION_DELETED:
                alive.discard(event.session_id)
            else:
                alive.add(event.session_id)
    initial = {e.session_id: e.session for e in stream.initial_events}
    assert sorted(initial) == sorted(alive), "INITIAL sessions are not those alive at read_at"
    for sid, snapshot in initial.items():
        assert snapshot.revision == last_change[sid], (
            f"{sid}: initial snapshot at revision {snapshot.revision}, last change up to "
            f"{read_at} was {last_change[sid]}"
        )

    # Initial state + live events = the final state.
    state = dict(initial)
    for event in stream.events:
        if event.type in (
            event_pb2.EVENT_TYPE_SESSION_DELETED,
            event_pb2.EVENT_TYPE_SESSION_PURGED,
        ):
            state.pop(event.session_id, None)
        else:
            state[event.session_id] = event.session
    final = await list_all_sessions(server)
    assert sorted(state) == sorted(final)
    for sid, session in final.items():
        assert state[sid] == session, f"{sid}: {session_diff(state[sid], session)}"


# --------------------------------------------------------------------------
# PROGRESS


async def test_progress_on_an_idle_stream_advances_past_filtered_out_writes(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("other")
    async with WatchRecorder(
        server.sessions,
        name="idle",
        progress_interval_ms=50,
        filter=session_service_pb2.WatchFilter(session_ids=["nobody"]),
    ) as recorder:
        created = await recorder.wait_created()
        await wait_nudging_clock(
            server, recorder, lambda s: any(r.type == PROGRESS for r in s.responses), "a PROGRESS"
        )
        for i in range(3):
            await writer.append("other", f"m{i}")
        target = writer.last_revision
        await wait_nudging_clock(
            server,
            recorder,
            lambda s: any(r.type == PROGRESS and r.revision >= target for r in s.responses),
            f"a PROGRESS at >= {target}",
        )
    stream = recorder.stream
    assert not stream.events
    progress = [r.revision for r in stream.responses if r.type == PROGRESS]
    assert progress[0] >= created.revision
    assert progress == sorted(progress), f"PROGRESS revisions went back: {progress}"
    assert all(r.HasField("time") for r in stream.responses)
    WatchValidator(ChangeLog()).validate(stream)


async def test_no_progress_responses_when_progress_interval_is_zero(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("s")
    async with WatchRecorder(
        server.sessions, name="quiet", filter=session_service_pb2.WatchFilter(session_ids=["x"])
    ) as quiet:
        await quiet.wait_created()
        for i in range(3):
            await writer.append("s", f"m{i}")
        # A second watch with progress proves time passed for the server.
        async with WatchRecorder(
            server.sessions,
            name="ticking",
            progress_interval_ms=50,
            filter=session_service_pb2.WatchFilter(session_ids=["x"]),
        ) as ticking:
            await wait_nudging_clock(
                server,
                ticking,
                lambda s: sum(r.type == PROGRESS for r in s.responses) >= 2,
                "two PROGRESS",
            )
    assert [r.type for r in quiet.stream.responses] == [CREATED]


# --------------------------------------------------------------------------
# Slow subscribers


async def test_stalled_subscriber_does_not_block_writers_and_later_receives_everything(
    server: Any,
) -> None:
    writer = ChangeLogWriter.for_server(server)
    ids = [f"s{i}" for i in range(20)]
    for sid in ids:
        await writer.create(sid)
    # Its own channel without BDP probing keeps the flow-control window at
    # 64 KiB, so the server really cannot push the ~3 MB of events through.
    stalled_channel = grpc.aio.insecure_channel(
        server.address, options=[("grpc.http2.bdp_probe", 0)]
    )
    stalled_stub = session_service_pb2_grpc.SessionServiceStub(stalled_channel)
    stalled_call = stalled_stub.WatchSessions(session_service_pb2.WatchSessionsRequest())
    created = await asyncio.wait_for(stalled_call.read(), DEFAULT_TIMEOUT)
    assert created.type == CREATED
    stalled = RecordedStream(request=session_service_pb2.WatchSessionsRequest(), name="stalled")
    stalled.responses.append(created)
    payload = "p" * 1500  # ~3 MB of events in all: far beyond flow-control windows
    try:
        async with WatchRecorder(server.sessions, name="reading", timeout=60) as reading:
            await reading.wait_created()
            semaphore = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with semaphore:
                    await writer.append(ids[i % len(ids)], f"{i} {payload}")

            # The stalled subscriber reads nothing while 2,000 writes complete.
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(2000))), 90)
            await reading.wait_covered(writer.last_revision)

        async with asyncio.timeout(60):
            while stalled.last_covered < writer.last_revision:
                response = await stalled_call.read()
                assert response is not grpc.aio.EOF, "stalled stream ended early"
                stalled.responses.append(response)
    finally:
        stalled_call.cancel()
        await stalled_channel.close()
    expected = writer.log.filtered(lambda e: e.revision > created.revision)
    WatchValidator(expected).validate(stalled)
    WatchValidator(expected).validate(reading.stream)
    assert_same_events(stalled.events, reading.stream.events, "stalled vs reading")


# --------------------------------------------------------------------------
# Limits and resources


async def open_watch_or_error(stub: Any) -> tuple[WatchRecorder, grpc.aio.AioRpcError | None]:
    recorder = WatchRecorder(stub, name="extra")
    recorder.start()
    await recorder.wait_until(
        lambda s: s.created is not None or recorder.finished, "CREATED or an error"
    )
    return recorder, recorder.stream.error


@pytest.mark.parametrize(
    "limits",
    [
        Limits(max_watchers=10, max_watchers_per_caller=2),
        Limits(max_watchers=2, max_watchers_per_caller=10),
    ],
    ids=["per_caller", "server_wide"],
)
async def test_watches_beyond_the_limit_are_resource_exhausted_until_one_closes(
    make_server: Any, limits: Limits
) -> None:
    server = await make_server(limits=limits)
    recorders = []
    try:
        for _ in range(2):
            recorder, error = await open_watch_or_error(server.sessions)
            recorders.append(recorder)
            assert error is None, f"watch within the limit failed: {error}"
        extra, error = await open_watch_or_error(server.sessions)
        recorders.append(extra)
        assert error is not None, "a third watch was accepted"
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
        assert extra.stream.responses == []

        await recorders[0].stop()
        # The slot frees once the server has seen the cancel: retry, bounded.
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            while True:
                again, error = await open_watch_or_error(server.sessions)
                recorders.append(again)
                if error is None:
                    break
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.02)
    finally:
        for recorder in recorders:
            await recorder.stop()


def hub_watcher_count(server: Any) -> int | None:
    hub = getattr(server.running, "hub", None)
    count = getattr(hub, "watcher_count", None)
    if callable(count):
        count = count()
    return None if count is None else int(count)


async def test_subscribe_cancel_cycles_leak_no_tasks_or_watchers(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("s")
    # One warm-up cycle so lazily created server tasks exist in the baseline.
    async with WatchRecorder(server.sessions, name="warm-up") as warm:
        await warm.wait_created()
    await asyncio.sleep(0)
    await eventually(lambda: hub_watcher_count(server) in (None, 0), "warm-up watcher gone")
    baseline = len(asyncio.all_tasks())

    requests = [
        session_service_pb2.WatchSessionsRequest(),
        session_service_pb2.WatchSessionsRequest(include_initial=True),
        session_service_pb2.WatchSessionsRequest(start_revision=1),
        session_service_pb2.WatchSessionsRequest(
            progress_interval_ms=50, filter=session_service_pb2.WatchFilter(owner_ids=["x"])
        ),
    ]
    for i in range(1000):
        call = server.sessions.WatchSessions(requests[i % len(requests)])
        if i % 5 != 4:  # every fifth is cancelled before anything is read
            first = await asyncio.wait_for(call.read(), DEFAULT_TIMEOUT)
            assert first.type == CREATED, describe_response(first)
        call.cancel()

    await eventually(
        lambda: len(asyncio.all_tasks()) <= baseline,
        f"tasks did not return to the baseline of {baseline}",
    )
    count = hub_watcher_count(server)
    if count is not None:
        await eventually(lambda: hub_watcher_count(server) == 0, "hub still counts watchers")
    # The server still serves a watch normally.
    async with WatchRecorder(server.sessions, name="after") as after:
        await after.wait_created()
        await writer.append("s", "still works")
        await after.wait_covered(writer.last_revision)
    WatchValidator(writer.log).validate(after.stream)
    assert count is not None, (
        "tasks are balanced, but the hub exposes no watcher count "
        "(running.hub.watcher_count) to check that its registry is empty"
    )


# --------------------------------------------------------------------------
# Shutdown


async def test_server_stop_ends_streams_with_progress_then_unavailable(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("s", owner_id="alice")
    async with (
        WatchRecorder(server.sessions, name="all") as everything,
        WatchRecorder(
            server.sessions,
            name="none",
            filter=session_service_pb2.WatchFilter(session_ids=["nobody"]),
        ) as nothing,
    ):
        await everything.wait_created()
        await nothing.wait_created()
        for i in range(3):
            await writer.append("s", f"m{i}")
        await everything.wait_covered(writer.last_revision)
        await asyncio.wait_for(server.running.stop(5), DEFAULT_TIMEOUT)
        for recorder in (everything, nothing):
            await recorder.wait_ended()
    for recorder in (everything, nothing):
        stream = recorder.stream
        assert stream.error is not None, f"{stream.name} ended without an error"
        assert stream.error.code() == grpc.StatusCode.UNAVAILABLE, stream.summary()
        last = stream.responses[-1]
        assert last.type == PROGRESS, f"{stream.name}: last response {describe_response(last)}"
        assert last.revision >= max([e.revision for e in stream.events], default=0)
        assert last.revision <= writer.last_revision
    WatchValidator(writer.log).validate(everything.stream)
    assert EVENTS in [r.type for r in everything.stream.responses]


# --------------------------------------------------------------------------
# The validator itself: each broken guarantee is reported, so a passing watch
# test means something.


def _event(revision: int, sid: str, kind: int) -> event_pb2.SessionEvent:
    return event_pb2.SessionEvent(
        revision=revision, session_id=sid, type=kind, session=session_pb2.Session(id=sid)
    )


def _response(kind: int, revision: int, *events: event_pb2.SessionEvent) -> Any:
    return session_service_pb2.WatchSessionsResponse(type=kind, revision=revision, events=events)


_NEW = event_pb2.EVENT_TYPE_SESSION_CREATED
_CHANGED = event_pb2.EVENT_TYPE_SESSION_UPDATED


def _good_stream() -> list[Any]:
    return [
        _response(CREATED, 0),
        _response(EVENTS, 1, _event(1, "a", _NEW)),
        _response(
            EVENTS, 3, _event(2, "b", _NEW), _event(3, "a", _CHANGED), _event(3, "b", _CHANGED)
        ),
        _response(PROGRESS, 4),
    ]


def _good_log() -> ChangeLog:
    log = ChangeLog()
    for revision, sid, kind in (
        (1, "a", _NEW),
        (2, "b", _NEW),
        (3, "a", _CHANGED),
        (3, "b", _CHANGED),
    ):
        log.expect(revision, sid, kind)
    return log


BROKEN: dict[str, tuple[str, Callable[[list[Any]], list[Any]]]] = {
    "ordered": ("ordered", lambda r: [r[0], r[2], r[1], r[3]]),
    "unique": ("unique", lambda r: [r[0], r[1], r[1], r[2], r[3]]),
    "reliable_gap": ("reliable", lambda r: [r[0], r[2], r[3]]),
    "reliable_phantom": (
        "reliable",
        lambda r: [*r[:3], _response(EVENTS, 4, _event(4, "c", _NEW))],
    ),
    "atomic_split": (
        "atomic",
        lambda r: [
            r[0],
            r[1],
            _response(EVENTS, 3, _event(2, "b", _NEW), _event(3, "a", _CHANGED)),
            _response(EVENTS, 3, _event(3, "b", _CHANGED)),
            r[3],
        ],
    ),
    "atomic_partial": (
        "atomic",
        lambda r: [
            r[0],
            r[1],
            _response(EVENTS, 3, _event(2, "b", _NEW), _event(3, "a", _CHANGED)),
            r[3],
        ],
    ),
    "bookmarkable": ("bookmarkable", lambda r: [r[0], r[1], _response(PROGRESS, 3), r[2], r[3]]),
    "well_formed": ("well-formed", lambda r: r[1:]),
}


@pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
def test_validator_reports_each_broken_guarantee(
    broken: tuple[str, Callable[[list[Any]], list[Any]]],
) -> None:
    good = RecordedStream(request=session_service_pb2.WatchSessionsRequest(), name="good")
    good.responses = _good_stream()
    WatchValidator(_good_log()).validate(good)
    guarantee, mutate = broken
    bad = RecordedStream(request=good.request, name="bad", responses=mutate(_good_stream()))
    problems = WatchValidator(_good_log()).problems(bad)
    assert any(p.startswith(guarantee) for p in problems), problems


def test_validator_reports_a_resumption_that_skips_or_repeats() -> None:
    first = RecordedStream(request=session_service_pb2.WatchSessionsRequest(), name="first")
    first.responses = _good_stream()[:2]  # covers up to revision 1: resume at 2
    for start, guarantees in ((3, {"resumable"}), (1, {"resumable", "unique"})):
        resumed = RecordedStream(
            request=session_service_pb2.WatchSessionsRequest(start_revision=start), name="resumed"
        )
        resumed.responses = [_response(CREATED, 4)] + [
            r for r in _good_stream()[1:] if not r.events or r.events[0].revision >= start
        ]
        problems = WatchValidator(_good_log()).problems(first, resumed)
        found = {p.split(" ")[0].rstrip(":") for p in problems}
        assert guarantees <= found, problems
