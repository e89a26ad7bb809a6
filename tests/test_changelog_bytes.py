"""The change log on disk has a byte budget beside its count and age bounds.

Whatever ``changelog_keep_revisions`` and ``changelog_max_age_seconds`` say,
compaction drops the oldest revisions until the events left take at most
``changelog_max_bytes`` (the budget is what keeps the disk bounded), but it
never drops the newest revision. Checked from the outside: the compacted
revision a watch reports, what a watch from just above it replays, and the
REVISION_COMPACTED answer just at it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from watch_validator import (
    DEFAULT_TIMEOUT,
    ChangeLogWriter,
    RecordedStream,
    WatchRecorder,
    WatchValidator,
    error_info,
    watch_error,
    watch_until,
)

GOAL = "g" * 50_000  # about 50 KB per revision


async def compacted_revision(server: Any) -> int:
    async with WatchRecorder(server.sessions, name="probe") as probe:
        created = await probe.wait_created()
    return int(created.compacted_revision)


async def settled_log(server: Any, last: int, budget: int) -> tuple[int, RecordedStream]:
    """Poll (bounded) until compaction has brought the log within budget: (compacted, replay)."""
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        while True:
            compacted = await compacted_revision(server)
            if compacted:
                try:
                    replay = await watch_until(server.sessions, last, name="replay",
                                               start_revision=compacted + 1)
                except AssertionError:
                    continue  # compacted again meanwhile: look again
                if sum(e.ByteSize() for e in replay.events) <= budget:
                    return compacted, replay
            await asyncio.sleep(0.05)


async def test_the_change_log_is_compacted_to_its_byte_budget_whatever_count_and_age_say(
        make_server: Any) -> None:
    budget = 400_000
    server = await make_server(changelog_max_bytes=budget, changelog_keep_revisions=100_000,
                               changelog_max_age_seconds=0, compaction_interval_seconds=0.05)
    writer = ChangeLogWriter.for_server(server)
    for i in range(20):
        await writer.create(f"s{i:02d}", goal=GOAL)
    last = writer.last_revision
    compacted, replay = await settled_log(server, last, budget)

    kept = [e.ByteSize() for e in replay.events]
    # Within the budget, and not one revision more was dropped than it needs.
    assert sum(kept) <= budget < sum(kept) + max(kept)
    assert compacted < last
    WatchValidator(writer.log.filtered(lambda e: e.revision > compacted)).validate(replay)
    error, _ = await watch_error(server.sessions, start_revision=compacted)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert info is not None and info.reason == "REVISION_COMPACTED"


async def test_a_byte_budget_smaller_than_one_revision_keeps_the_newest_revision(
        make_server: Any) -> None:
    server = await make_server(changelog_max_bytes=1, changelog_keep_revisions=0,
                               changelog_max_age_seconds=0, compaction_interval_seconds=0.05)
    writer = ChangeLogWriter.for_server(server)
    for i in range(5):
        await writer.create(f"s{i}", goal=GOAL)
    last = writer.last_revision
    async with asyncio.timeout(DEFAULT_TIMEOUT):
        while True:
            compacted = await compacted_revision(server)
            if compacted >= last - 1:
                break
            await asyncio.sleep(0.05)
    assert compacted == last - 1
    replay = await watch_until(server.sessions, last, start_revision=last)
    assert [e.session_id for e in replay.events] == ["s4"]
