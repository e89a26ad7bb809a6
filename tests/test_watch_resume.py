"""WatchSessions, resumed: replay from the change log, resumption, compaction.

A client that loses its stream resumes with start_revision = last seen + 1;
these tests check that the resumed stream continues exactly (no gap, no
duplicate), that a replay from any revision equals what a live subscriber
saw, that PROGRESS bookmarks are safe resume points, and that a revision the
log no longer holds ends the call with REVISION_COMPACTED and the compacted
revision.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from sessiond.v1 import event_pb2, session_pb2, session_service_pb2
from watch_validator import (
    DEFAULT_TIMEOUT,
    EVENTS,
    ChangeLogWriter,
    RecordedStream,
    WatchRecorder,
    WatchValidator,
    assert_same_events,
    error_info,
    filter_matches,
    watch_error,
    watch_until,
)


async def mixed_workload(w: ChangeLogWriter, server: Any, prefix: str = "") -> None:
    """Every kind of write, including revisions with several events."""
    a, b, c, d = (f"{prefix}{x}" for x in "abcd")
    await w.create(a, owner_id="alice", runtime_instance=f"{prefix}ri")
    await w.create(b, owner_id="bob", runtime_instance=f"{prefix}ri")
    await w.create(c, owner_id="alice", runtime_instance=f"{prefix}ri")
    await w.append(a, "one", "two")
    await w.update(b, ["display_name"], display_name="B")
    await w.set_runtime_state(c, session_pb2.RUNTIME_STATE_RUNNING, turn_id="t1")
    await w.record_usage(a)
    await w.reconcile(f"{prefix}ri")  # a, b, c become UNKNOWN in one revision
    await w.append(a, "revives")
    await w.pop(a)
    await w.update_last(a, "edited")
    await w.fork(a, d, up_to_seq=1)
    await w.clear(a)
    await w.touch(b)
    await w.end(c, session_pb2.SESSION_STATUS_CANCELLED)
    await w.delete(b)


async def test_resume_from_last_plus_one_after_cancel_continues_exactly(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    ids = [f"s{i}" for i in range(5)]
    for sid in ids:
        await writer.create(sid)
    start = writer.last_revision + 1

    done = asyncio.Event()

    async def keep_writing() -> None:
        for i in range(120):
            await writer.append(ids[i % len(ids)], f"m{i}")
            if i % 30 == 29:
                await writer.reconcile("nobody")  # changes nothing: revision 0
        done.set()

    writes = asyncio.create_task(keep_writing())
    streams: list[RecordedStream] = []
    resume_at = start
    try:
        # Cancel and resume repeatedly while writes continue.
        for attempt in range(6):
            async with WatchRecorder(
                server.sessions, name=f"attempt{attempt}", start_revision=resume_at
            ) as recorder:
                await recorder.wait_created()
                await recorder.wait_until(
                    lambda s: len(s.events) >= 5 or done.is_set(), "a few events"
                )
            streams.append(recorder.stream)
            resume_at = recorder.stream.resume_revision
        await asyncio.wait_for(writes, DEFAULT_TIMEOUT)
        final = await watch_until(
            server.sessions, writer.last_revision, name="final", start_revision=resume_at
        )
        streams.append(final)
    finally:
        writes.cancel()
        await asyncio.gather(writes, return_exceptions=True)
    WatchValidator(writer.log.filtered(lambda e: e.revision >= start)).validate(*streams)
    union = [e for s in streams for e in s.events]
    replay = await watch_until(server.sessions, writer.last_revision, start_revision=start)
    assert_same_events(union, replay.events, "resumed streams vs one replay")


async def test_replay_from_every_revision_equals_the_live_stream(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    async with WatchRecorder(server.sessions, name="live") as live:
        created = await live.wait_created()
        await mixed_workload(writer, server)
        await live.wait_covered(writer.last_revision)
    WatchValidator(writer.log).validate(live.stream)
    for start in range(created.revision + 1, writer.last_revision + 1):
        replay = await watch_until(
            server.sessions, writer.last_revision, name=f"replay@{start}", start_revision=start
        )
        WatchValidator(writer.log.filtered(lambda e, s=start: e.revision >= s)).validate(replay)
        assert_same_events(
            replay.events,
            [e for e in live.stream.events if e.revision >= start],
            f"replay from {start}",
        )


async def test_many_event_revision_is_one_response_live_and_replayed(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    ids = [f"s{i:03d}" for i in range(300)]
    semaphore = asyncio.Semaphore(32)

    async def create(sid: str) -> None:
        async with semaphore:
            await writer.create(sid, runtime_instance="ri")

    await asyncio.gather(*(create(sid) for sid in ids))
    async with WatchRecorder(server.sessions, name="live") as live:
        await live.wait_created()
        reconciled = await writer.reconcile("ri")
        assert len(reconciled.marked_session_ids) == len(ids)
        server.clock.advance(60)
        await writer.touch(ids[0])
        purged = await writer.purge(ids[1:], keep_newest=1)
        await live.wait_covered(writer.last_revision)
    replay = await watch_until(
        server.sessions, writer.last_revision, name="replay", start_revision=reconciled.revision
    )
    for stream in (live.stream, replay):
        WatchValidator(writer.log).validate(stream)
        for revision, count in ((reconciled.revision, len(ids)), (purged.revision, len(ids) - 1)):
            holding = [r for r in stream.responses if any(e.revision == revision for e in r.events)]
            assert len(holding) == 1, (
                f"{stream.name}: revision {revision} in {len(holding)} responses"
            )
            assert sum(e.revision == revision for e in holding[0].events) == count


async def test_progress_bookmark_is_a_safe_resume_point(server: Any) -> None:
    writer = ChangeLogWriter.for_server(server)
    alice = session_service_pb2.WatchFilter(owner_ids=["alice"])
    await writer.create("a", owner_id="alice")
    await writer.create("b", owner_id="bob")
    async with WatchRecorder(
        server.sessions, name="first", filter=alice, progress_interval_ms=50
    ) as first:
        await first.wait_created()
        await writer.append("a", "for alice")
        for i in range(5):
            await writer.append("b", f"for bob {i}")
        target = writer.last_revision

        async def nudge() -> None:
            while True:
                await asyncio.sleep(0.02)
                server.clock.advance(0.1)

        nudger = asyncio.create_task(nudge())
        try:
            await first.wait_covered(target)  # only a PROGRESS can vouch for bob's writes
        finally:
            nudger.cancel()
            await asyncio.gather(nudger, return_exceptions=True)
    bookmark = first.stream.last_covered
    assert bookmark >= target
    await writer.append("a", "after the bookmark")
    second = await watch_until(
        server.sessions,
        writer.last_revision,
        name="second",
        start_revision=bookmark + 1,
        filter=alice,
    )
    expected = writer.log.filtered(lambda e: e.session_id == "a")
    WatchValidator(expected).validate(first.stream, second)
    assert [e.revision for e in second.events] == [writer.last_revision]


async def test_start_revision_below_compaction_fails_with_revision_compacted(
    make_server: Any,
) -> None:
    # Compaction keeps the newest 10 revisions and drops older ones once they
    # are older than a minute (on the fake clock).
    server = await make_server(
        changelog_keep_revisions=10, changelog_max_age_seconds=60, compaction_interval_seconds=0.05
    )
    writer = ChangeLogWriter.for_server(server)
    await writer.create("s")
    for i in range(40):
        await writer.append("s", f"m{i}")
    last = writer.last_revision
    server.clock.advance(3600)

    # Compaction runs every 0.05 s: poll (bounded) until it has run.
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        while True:
            async with WatchRecorder(server.sessions, name="probe") as probe:
                created = await probe.wait_created()
            if created.compacted_revision > 0:
                break
            await asyncio.sleep(0.05)
    compacted = created.compacted_revision
    assert compacted <= last - 10, f"compacted {compacted} keeps fewer than 10 of {last}"

    for start in (1, compacted):
        try:
            error, responses = await watch_error(server.sessions, start_revision=start)
        except AssertionError as failure:
            raise AssertionError(
                f"start_revision {start} <= compacted_revision {compacted}: {failure}"
            ) from None
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (error.code(), error.details())
        info = error_info(error)
        assert info is not None, "no ErrorInfo in the status details"
        assert info.reason == "REVISION_COMPACTED"
        assert info.domain == "sessiond.v1"
        assert int(info.metadata["compacted_revision"]) == compacted
        assert not [r for r in responses if r.type == EVENTS]

    resumed = await watch_until(
        server.sessions, last, name="after-compaction", start_revision=compacted + 1
    )
    assert resumed.created is not None and resumed.created.compacted_revision == compacted
    WatchValidator(writer.log.filtered(lambda e: e.revision > compacted)).validate(resumed)

    # The client lists again: include_initial still works.
    async with WatchRecorder(server.sessions, name="relist", include_initial=True) as relist:
        await relist.wait_until(lambda s: s.initial_complete is not None, "INITIAL_COMPLETE")
    assert [e.session_id for e in relist.stream.initial_events] == ["s"]


async def test_resume_after_graceful_restart_from_the_shutdown_progress(make_server: Any) -> None:
    first = await make_server()
    database = first.running.config.database
    writer = ChangeLogWriter.for_server(first)
    alice = session_service_pb2.WatchFilter(owner_ids=["alice"])
    await writer.create("a", owner_id="alice")
    await writer.create("b", owner_id="bob")
    async with WatchRecorder(first.sessions, name="before", filter=alice) as before:
        await before.wait_created()
        one = await writer.append("a", "one")
        await writer.append("b", "filtered out")
        await before.wait_covered(one.revision)
        await asyncio.wait_for(first.running.stop(5), DEFAULT_TIMEOUT)
        await before.wait_ended()
    assert before.stream.error is not None
    assert before.stream.error.code() == grpc.StatusCode.UNAVAILABLE

    second = await make_server(database=database)
    writer2 = ChangeLogWriter.for_server(second)
    await writer2.append("a", "two")
    after = await watch_until(
        second.sessions,
        writer2.last_revision,
        name="after",
        start_revision=before.stream.resume_revision,
        filter=alice,
    )
    expected = writer.log.merged(writer2.log).filtered(lambda e: filter_matches(alice, e))
    WatchValidator(expected).validate(before.stream, after)
    assert [e.revision for e in after.events] == [writer2.last_revision]
    assert all(e.type == event_pb2.EVENT_TYPE_MESSAGES_APPENDED for e in after.events)
