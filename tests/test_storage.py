"""Storage guarantees that only the database can show: query plans and migrations."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sessiond.v1 import message_pb2, session_pb2, session_service_pb2
from sessiond_server.store import SchemaTooNew, Scope, SQLiteStore, Unavailable
from sessiond_server.store.logic import INITIAL_PAGE_ROWS
from sessiond_server.store.revisions import compaction_target
from sessiond_server.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION


def wall_clock() -> int:
    return time.time_ns() // 1000


def plan(db: Path, sql: str, params: list[object]) -> str:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return "\n".join(str(r[-1]) for r in rows)


ORDERS = [
    session_service_pb2.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT,
    session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT,
    session_service_pb2.SESSION_ORDER_FIELD_ENDED_AT,
    session_service_pb2.SESSION_ORDER_FIELD_COST,
    session_service_pb2.SESSION_ORDER_FIELD_TOKENS,
]
FILTERS = [
    session_pb2.SessionFilter(),
    session_pb2.SessionFilter(statuses=[session_pb2.SESSION_STATUS_ABANDONED]),
    session_pb2.SessionFilter(agents=["a"], channels=["discord."], labels={"k": "v"}),
    session_pb2.SessionFilter(text_query="hello", owner_ids=["u"]),
]


@pytest.mark.parametrize("order_by", ORDERS)
@pytest.mark.parametrize("ascending", [False, True])
@pytest.mark.parametrize("session_filter", FILTERS)
async def test_every_session_listing_walks_an_index_without_sorting(
        tmp_path: Path, order_by: int, ascending: bool,
        session_filter: session_pb2.SessionFilter) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock)
    await store.open()
    try:
        for cursor in (None, (5, "x")):
            sql, params = store.list_sessions_sql(Scope(), session_filter, order_by,  # type: ignore[arg-type]
                                                  ascending, 50, cursor, wall_clock())
            shown = plan(store.path, sql, params)
            assert "USE TEMP B-TREE FOR ORDER BY" not in shown, shown
            assert "USING INDEX sessions_by_" in shown, shown
            assert "SCAN s\n" not in shown + "\n", shown
    finally:
        await store.close()


async def test_reading_the_last_messages_uses_the_sequence_index(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock)
    await store.open()
    await store.close()
    shown = plan(tmp_path / "s.db",
                 "SELECT * FROM messages m WHERE m.session_pk = ? ORDER BY m.seq DESC LIMIT 20",
                 [1])
    assert "messages_by_seq" in shown and "TEMP B-TREE" not in shown, shown


async def test_the_count_of_sessions_still_active_reads_minutes_then_one_minute_of_rows(
        tmp_path: Path) -> None:
    # GetStats' active count: a range of the active rollup's key after the cutoff's minute,
    # and a range of the status index inside that minute; neither walks every active session.
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock)
    await store.open()
    try:
        now = wall_clock()
        for whole_days in (session_pb2.SessionFilter(),
                           session_pb2.SessionFilter(owner_ids=["u"])):
            _, (sql, params) = store._rollup_stats_sql(Scope(), whole_days, now - 1, now)
            shown = plan(store.path, sql, list(params))
            assert "SEARCH a USING PRIMARY KEY (tenant=? AND minute>?)" in shown, shown
            assert ("INDEX sessions_by_status (tenant=? AND status=?"
                    " AND last_activity_at>? AND last_activity_at<?)") in shown, shown
    finally:
        await store.close()


def build_version_1(path: Path) -> None:
    """A database as the first schema version left it, with one conversation."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(MIGRATIONS[0][1])
    conn.execute("INSERT INTO meta VALUES ('revision', 2), ('compacted_revision', 0),"
                 " ('page_token_key', x'00')")
    conn.execute(
        "INSERT INTO sessions (pk, tenant, id, kind, status, runtime_state, started_at,"
        " last_activity_at, updated_at, message_count, last_seq, revision)"
        " VALUES (1, 'default', 'old', 1, 1, 1, 1, 1, 1, 1, 1, 2)")
    body = message_pb2.Message(status=message_pb2.MESSAGE_STATUS_COMPLETE).SerializeToString()
    conn.execute("INSERT INTO messages (session_pk, seq, role, content, is_turn, tool_calls,"
                 " created_at, updated_at, body) VALUES (1, 1, 2, 'legacy walrus', 0, 0, 1, 1, ?)",
                 (body,))
    conn.execute("PRAGMA user_version = 1")
    conn.close()


async def test_an_old_schema_is_migrated_forward_and_its_history_becomes_searchable(
        tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    build_version_1(db)
    store = SQLiteStore(db, clock=wall_clock)
    await store.open()
    try:
        found, _, _ = await store.search_messages(Scope(), "walrus", [], 10, None, 1 << 20)
        assert [m.content for m in found] == ["legacy walrus"]
        session, revision = await store.get_session(Scope(), "old")
        assert (session.message_count, revision) == (1, 2)
        # last_event_at (SQLite migration 7) was recomputed from the stored messages.
        assert session.last_event_at.ToMicroseconds() == 1
        # The stats rollup (version 3) was filled from the sessions already there.
        stats, _ = await store.get_stats(Scope(), session_pb2.SessionFilter())
        assert (stats.session_count, stats.message_count) == (1, 1)
        assert await store.check_consistency() == []
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_the_consistency_check_recomputes_last_event_at(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteStore(db, clock=wall_clock)
    await store.open()
    try:
        await store.create_session(Scope(), session_pb2.Session(id="s"))
        await store.append_messages(Scope(), "s", [message_pb2.Message(
            role=message_pb2.ROLE_USER, content="x")], None)
        assert await store.check_consistency() == []
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sessions SET last_event_at = 7 WHERE id = 's'")
    store = SQLiteStore(db, clock=wall_clock)
    await store.open()
    try:
        problems = await store.check_consistency()
        assert len(problems) == 1 and "'s': last_event_at 7 != recompute" in problems[0]
    finally:
        await store.close()


async def test_sessions_active_before_the_active_rollup_existed_count_as_active(
        tmp_path: Path) -> None:
    # The active rollup (version 6) is filled from the ACTIVE sessions already there: one
    # active a minute ago stays active in GetStats, one idle for days is abandoned.
    db = tmp_path / "old.db"
    build_version_1(db)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO sessions (pk, tenant, id, kind, status, runtime_state, started_at,"
            " last_activity_at, updated_at, revision) VALUES (2, 'default', 'recent', 1, 1, 1,"
            " ?1, ?1, ?1, 2)", (wall_clock() - 60_000_000,))
    store = SQLiteStore(db, clock=wall_clock, abandoned_after_seconds=3600)
    await store.open()
    try:
        stats, _ = await store.get_stats(Scope(), session_pb2.SessionFilter())
        assert (stats.active_count, stats.abandoned_count) == (1, 1)
        assert await store.check_consistency() == []
    finally:
        await store.close()


async def test_a_database_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    store = SQLiteStore(db, clock=wall_clock)
    with pytest.raises(SchemaTooNew, match="newer"):
        await store.open()
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("head", "keep", "aged", "target"),
    [
        (100, 10, None, 90),  # count bound only: all but the newest 10
        (100, 0, 40, 40),  # age bound only: everything older than it
        (100, 10, 40, 40),  # both: older than the age bound AND beyond the newest 10
        (100, 10, 95, 90),  # the newest 10 stay however old they are
        (100, 0, None, 0),  # no bound: nothing is dropped
        (5, 10, None, 0),  # fewer revisions than kept
    ],
)
def test_compaction_keeps_the_newest_revisions_and_drops_only_aged_ones(
        head: int, keep: int, aged: int | None, target: int) -> None:
    assert compaction_target(head, keep, aged) == target


async def test_an_initial_state_left_idle_lets_its_snapshot_go(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock)
    await store.open()
    try:
        await initial_state_left_idle_lets_its_snapshot_go(store)
    finally:
        await store.close()


async def test_held_snapshots_are_bounded_and_an_idle_one_gives_its_turn_back(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock)
    await store.open()
    try:
        await held_snapshots_are_bounded_and_an_idle_one_gives_its_turn_back(store)
    finally:
        await store.close()


async def held_snapshots_are_bounded_and_an_idle_one_gives_its_turn_back(store: Any) -> None:
    """At most ``held_snapshots`` initial states are held at once: one beyond them
    waits for a turn, which a closed one gives back, and so does one left idle for
    ``held_snapshot_idle_seconds`` (it then answers Unavailable), so a client that
    stops reading cannot keep the others waiting."""
    scope = Scope()
    for i in range(INITIAL_PAGE_ROWS + 1):  # two pages: the first leaves the snapshot held
        await store.create_session(scope, session_pb2.Session(id=f"s-{i:03d}"))
    store.held_snapshots = asyncio.BoundedSemaphore(2)
    first, second = store.initial_state(scope, []), store.initial_state(scope, [])
    for held in (first, second):
        page, _ = await anext(held)
        assert len(page) == INITIAL_PAGE_ROWS
    third = store.initial_state(scope, [])
    waiting = asyncio.ensure_future(anext(third))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "a third snapshot was held beside two"
    await first.aclose()
    page, _ = await asyncio.wait_for(waiting, 10)
    assert len(page) == INITIAL_PAGE_ROWS
    assert [len(p) for p, _ in [page async for page in second]] == [1]
    await third.aclose()

    store.held_snapshot_idle_seconds = 0.5
    idle = [store.initial_state(scope, []) for _ in range(2)]
    for held in idle:
        await anext(held)
    late = store.initial_state(scope, [])
    page, _ = await asyncio.wait_for(anext(late), 10)  # the idle ones gave their turns back
    assert len(page) == INITIAL_PAGE_ROWS
    for held in idle:
        with pytest.raises(Unavailable):
            await anext(held)
        await held.aclose()
    await late.aclose()
    store.held_snapshot_idle_seconds = 60.0
    assert store.held_snapshots._value == 2  # every turn was given back once
    assert len([s async for p, _ in store.initial_state(scope, []) for s in p]) == \
        INITIAL_PAGE_ROWS + 1


async def initial_state_left_idle_lets_its_snapshot_go(store: Any) -> None:
    """The initial state comes a page at a time from one held snapshot; a reader
    that waits longer than ``held_snapshot_idle_seconds`` for the next page gets
    Unavailable, and the store goes on serving; so does one that asks for a page
    past ``held_snapshot_max_seconds`` since the snapshot was taken."""
    scope = Scope()
    count = 2 * INITIAL_PAGE_ROWS + 5
    for i in range(count):
        await store.create_session(scope, session_pb2.Session(id=f"s-{i:03d}"))
    revision = store.revision
    pages = [page async for page in store.initial_state(scope, [])]
    assert [len(p) for p, _ in pages] == [INITIAL_PAGE_ROWS, INITIAL_PAGE_ROWS, 5]
    assert {at for _, at in pages} == {revision}
    assert [s.id for p, _ in pages for s in p] == [f"s-{i:03d}" for i in range(count)]

    store.held_snapshot_idle_seconds = 0.5
    slow = store.initial_state(scope, [])
    first, at = await anext(slow)
    assert len(first) == INITIAL_PAGE_ROWS and at == revision
    await store.create_session(scope, session_pb2.Session(id="later"))
    await asyncio.sleep(1.5)
    with pytest.raises(Unavailable):
        await anext(slow)
    await slow.aclose()
    session, _ = await store.get_session(scope, "later")
    assert session.id == "later"
    store.held_snapshot_idle_seconds = 60.0
    assert [s.id async for p, _ in store.initial_state(scope, ["later"]) for s in p] == ["later"]

    # Pages taken within the idle bound, but past the bound on the whole read.
    store.held_snapshot_max_seconds = 0.5
    paced = store.initial_state(scope, [])
    await anext(paced)
    await asyncio.sleep(0.6)
    with pytest.raises(Unavailable, match="in all"):
        await anext(paced)
    await paced.aclose()
    store.held_snapshot_max_seconds = 600.0
