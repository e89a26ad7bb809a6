"""PostgreSQL storage guarantees only the database can show.

Query plans use the indexes; migrations refuse a newer schema untouched and
let replicas start together; group commit keeps each write's own outcome; the
change feed delivers other replicas' commits in order even when the LISTEN
connection is lost; an unreachable database answers ``Unavailable`` and the
store recovers by itself; compaction runs on one replica at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from conftest import create_postgres_database, drop_postgres_databases
from sessiond.v1 import message_pb2, session_pb2, session_service_pb2
from sessiond_server.store import (
    InvalidArgument,
    MessageQuery,
    NotFound,
    SchemaTooNew,
    Scope,
    Unavailable,
)
from sessiond_server.store.interface import Change
from sessiond_server.store.postgres import PostgresStore
from sessiond_server.store.postgres_schema import COMPACTION_LOCK, SCHEMA_VERSION
from sessiond_server.store.revisions import PROVISIONAL
from sessiond_server.store.state import MAX_STATE_BYTES
from test_storage import (
    held_snapshots_are_bounded_and_an_idle_one_gives_its_turn_back,
    initial_state_left_idle_lets_its_snapshot_go,
)
from test_workers import far_behind_replica_catches_up_in_bounded_steps

asyncpg = pytest.importorskip("asyncpg")
pytestmark = pytest.mark.postgres

DEADLINE = 20.0


def wall_clock() -> int:
    return time.time_ns() // 1000


OpenStore = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def database(postgres_server: str) -> AsyncIterator[str]:
    url = await create_postgres_database(postgres_server)
    yield url
    await drop_postgres_databases(postgres_server, [url])


@pytest.fixture
async def open_store(database: str) -> AsyncIterator[OpenStore]:
    stores: list[PostgresStore] = []

    async def factory(**options: Any) -> PostgresStore:
        store = PostgresStore(options.pop("url", database), clock=wall_clock, **options)
        await store.open()
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


async def explain(url: str, sql: str, params: Sequence[Any]) -> str:
    conn = await asyncpg.connect(url)
    try:
        # Tiny test tables would be scanned whole and sorted; forbid what can be avoided,
        # so the plan shows whether an index serves the filter and the order (a Sort that
        # remains means no index can).
        await conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off;"
                           " SET enable_sort = off")
        rows = await conn.fetch(f"EXPLAIN {sql}", *params)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


class Recorder:
    """A change listener that keeps everything delivered, to wait on."""

    def __init__(self, store: PostgresStore) -> None:
        self.changes: list[Change] = []
        self._store = store
        self._delivered = asyncio.Event()
        store.add_listener(self._record)

    def _record(self, changes: Sequence[Change]) -> None:
        self.changes.extend(changes)
        self._delivered.set()

    async def wait_for(self, revision: int) -> None:
        async with asyncio.timeout(DEADLINE):
            while self._store.revision < revision:
                self._delivered.clear()
                await self._delivered.wait()

    @property
    def revisions(self) -> list[int]:
        return [c.revision for c in self.changes]


async def create(store: PostgresStore, session_id: str) -> int:
    _, _, revision = await store.create_session(Scope(), session_pb2.Session(id=session_id))
    return revision


ORDERS = [
    session_service_pb2.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT,
    session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT,
    session_service_pb2.SESSION_ORDER_FIELD_ENDED_AT,
    session_service_pb2.SESSION_ORDER_FIELD_COST,
    session_service_pb2.SESSION_ORDER_FIELD_TOKENS,
]


async def test_every_session_listing_walks_an_index_without_sorting(
        open_store: OpenStore, database: str) -> None:
    store = await open_store()
    for order_by in ORDERS:
        for ascending in (False, True):
            for cursor in (None, (5, "x")):
                sql, params = store.list_sessions_sql(
                    Scope(), session_pb2.SessionFilter(agents=["a"]), order_by,  # type: ignore[arg-type]
                    ascending, 50, cursor, wall_clock())
                shown = await explain(database, sql, params)
                assert "Index Scan" in shown and "sessions_by_" in shown, shown
                assert "Sort" not in shown, shown


async def test_last_messages_and_keyword_search_use_their_indexes(
        open_store: OpenStore, database: str) -> None:
    await open_store()
    shown = await explain(database, "SELECT * FROM messages m WHERE m.session_pk = $1"
                          " ORDER BY m.seq DESC LIMIT 20", [1])
    assert "messages_pkey" in shown and "Sort" not in shown, shown
    shown = await explain(database, "SELECT m.row_id FROM messages m WHERE"
                          " to_tsvector('simple', left(m.content, 100000))"
                          " @@ plainto_tsquery('simple', $1)", ["walrus"])
    assert "messages_fts" in shown, shown


async def test_a_database_from_a_newer_version_is_refused_untouched(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL"
                           " DEFAULT 0, data BYTEA)")
        await conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', $1)",
                           SCHEMA_VERSION + 1)
        store = PostgresStore(database, clock=wall_clock)
        with pytest.raises(SchemaTooNew, match="newer"):
            await store.open()
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [r[0] for r in tables] == ["meta"]
        assert await conn.fetchval("SELECT value FROM meta") == SCHEMA_VERSION + 1
    finally:
        await conn.close()


async def test_replicas_starting_together_migrate_once(open_store: OpenStore) -> None:
    stores = await asyncio.gather(*(open_store() for _ in range(4)))
    assert len({s.page_token_key for s in stores}) == 1
    assert [await s.check_consistency() for s in stores] == [[]] * 4


async def test_a_failing_write_in_a_batch_does_not_fail_its_neighbours(
        open_store: OpenStore) -> None:
    store = await open_store()
    results = await asyncio.gather(
        *(create(store, f"s{i}") for i in range(20)),
        store.get_session(Scope(), "absent"),
        store.append_messages(Scope(), "absent", [message_pb2.Message(content="x")], None),
        return_exceptions=True)
    revisions = results[:20]
    assert sorted(revisions) == list(range(1, 21)), revisions  # type: ignore[type-var]
    assert all(isinstance(r, NotFound) for r in results[20:]), results[20:]
    batches, writes = store.writer_stats
    assert writes == 21 and batches < writes
    # Refused after reads alone: the batch ran on without savepoints, nothing rolled back.
    assert store.writer.stats.rollbacks == 0
    assert await store.check_consistency() == []


async def test_a_write_failing_after_a_change_reruns_its_batch_with_savepoints(
        open_store: OpenStore) -> None:
    """A batch runs without savepoints first. An append whose second shared-state delta
    is refused after its first one was written makes the whole batch roll back and run
    again with a savepoint per write: the refused append leaves nothing behind, every
    neighbour is stored once, and the revisions have no gap."""
    store = await open_store()
    for i in range(6):
        await create(store, f"s{i}")
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")
    too_big = session_pb2.StateDelta(set={"blob": json.dumps("x" * (MAX_STATE_BYTES + 1))})
    refused = store.append_messages(
        Scope(), "s0", [message], None, shared_state_deltas=[
            session_pb2.SharedStateDelta(app="a", delta=session_pb2.StateDelta(
                set={"k": "1"})),
            session_pb2.SharedStateDelta(app="b", delta=too_big)])
    batches_before = store.writer_stats[0]
    results = await asyncio.gather(
        *(store.append_messages(Scope(), f"s{i}", [message], None) for i in range(1, 6)),
        refused, return_exceptions=True)
    assert isinstance(results[-1], InvalidArgument), results[-1]
    answered = [r for r in results[:-1] if not isinstance(r, BaseException)]
    assert [m.seq for r in answered for m in r.messages] == [1] * 5, results
    assert sorted(r.revision for r in answered) == list(range(7, 12))
    assert store.writer_stats[0] == batches_before + 1, "the appends were not one batch"
    assert store.writer.stats.rollbacks == 1
    assert (await store.get_shared_state(Scope(), "a", "")).state_json in ("", "{}")
    page = await store.list_messages(Scope(), "s0", MessageQuery())
    assert not page.messages
    assert await store.check_consistency() == []


async def test_other_replicas_commits_reach_listeners_in_revision_order(
        open_store: OpenStore) -> None:
    a = await open_store(poll_interval_seconds=30.0)  # notifications only
    b = await open_store(poll_interval_seconds=30.0)
    on_a, on_b = Recorder(a), Recorder(b)
    written = await asyncio.gather(*(create(a if i % 2 else b, f"s{i}") for i in range(40)))
    last = max(written)
    await on_a.wait_for(last)
    await on_b.wait_for(last)
    assert on_a.revisions == on_b.revisions == list(range(1, last + 1))
    assert [c.event.session_id for c in on_a.changes] == \
        [c.event.session_id for c in on_b.changes]


async def test_a_lost_listen_connection_only_delays_delivery(
        open_store: OpenStore, database: str) -> None:
    a = await open_store(poll_interval_seconds=0.05)
    b = await open_store()
    on_a = Recorder(a)
    conn = await asyncpg.connect(database)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'sessiond-listen' AND datname = current_database()")
        assert killed == 2
    finally:
        await conn.close()
    revision = await create(b, "after-the-loss")
    await on_a.wait_for(revision)
    assert on_a.revisions == [revision]
    again = await create(b, "after-reconnecting")
    await on_a.wait_for(again)
    assert on_a.revisions == [revision, again]


async def test_an_unreachable_database_is_unavailable_and_the_store_recovers(
        open_store: OpenStore, database: str, postgres_server: str) -> None:
    store = await open_store(poll_interval_seconds=0.05)
    other = await open_store()
    on_store = Recorder(store)
    await create(store, "before")
    name = database.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = $1", name)
        with pytest.raises(Unavailable) as read_failure:
            await store.get_session(Scope(), "before")
        with pytest.raises(Unavailable) as write_failure:
            await create(store, "during")
        for failure in (read_failure.value, write_failure.value):
            assert "select" not in failure.message.lower(), failure.message
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    async with asyncio.timeout(DEADLINE):
        while True:
            try:
                session, _ = await store.get_session(Scope(), "before")
                break
            except Unavailable:
                await asyncio.sleep(0.05)
    assert session.id == "before"
    revision = await create(other, "after")
    await on_store.wait_for(revision)
    assert on_store.revisions[-1] == revision
    assert await store.check_consistency() == []


async def test_compaction_runs_on_one_replica_at_a_time(
        open_store: OpenStore, database: str) -> None:
    store = await open_store()
    for i in range(10):
        await create(store, f"s{i}")
    holder = await asyncpg.connect(database)
    try:
        async with holder.transaction():
            assert await holder.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                         COMPACTION_LOCK)
            assert await store.compact(keep_revisions=3, max_age_seconds=0) == 0
        assert await store.compact(keep_revisions=3, max_age_seconds=0) == 7
    finally:
        await holder.close()
    assert [c.revision for c in await store.read_changes(8, 10)] == [8, 9, 10]
    assert await store.check_consistency() == []


async def append_text(store: PostgresStore, session_id: str, text: str) -> int:
    result = await store.append_messages(
        Scope(), session_id, [message_pb2.Message(role=message_pb2.ROLE_USER, content=text)],
        None)
    return result.revision


async def test_a_connection_lost_mid_batch_fails_the_whole_batch_and_the_next_one_works(
        open_store: OpenStore, database: str) -> None:
    """The group commit asks whether the transaction is still open after an error: a
    connection that dies in the middle of a batch fails the whole batch (nothing stored,
    every caller Unavailable, no revision taken), and the next batch commits."""
    store = await open_store()
    await create(store, "s")
    admin = await asyncpg.connect(database)
    try:
        # A message "die" ends its own connection in the middle of the batch's transaction.
        await admin.execute(
            "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.content = 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid());"
            " END IF; RETURN NEW; END $$;"
            " CREATE TRIGGER die BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION die()")
        # Holding the revision counter makes the writer wait at BEGIN with its first batch
        # while the next writes queue up behind it as one batch.
        async with admin.transaction():
            await admin.fetchval("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
            plug = asyncio.ensure_future(append_text(store, "s", "plug"))
            await asyncio.sleep(0.3)  # lets the write reach the writer (not an assertion)
            batch = [asyncio.ensure_future(append_text(store, "s", text))
                     for text in ("before", "die", "after")]
            await asyncio.sleep(0.3)
    finally:
        await admin.close()
    plugged = await plug
    failures = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(f, Unavailable) for f in failures), failures
    stored = await store.list_messages(Scope(), "s", MessageQuery())
    assert [m.content for m in stored.messages] == ["plug"]
    assert store.revision == plugged == stored.revision
    assert await append_text(store, "s", "next") == plugged + 1
    assert await store.check_consistency() == []


async def provisional_rows(url: str) -> int:
    """Committed session and change-log rows that still hold a provisional revision
    (there must be none)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            f"SELECT (SELECT count(*) FROM sessions WHERE revision > {PROVISIONAL})"
            f" + (SELECT count(*) FROM changes WHERE revision > {PROVISIONAL})"))
    finally:
        await conn.close()


async def test_the_counter_taken_last_gives_final_revisions_everywhere(
        open_store: OpenStore, database: str) -> None:
    """Writes of one batch, on two replicas at once: each answer, each event, each stored
    session row and each stored usage response carries the final revision, and the
    revisions of all of them are 1..N with none repeated."""
    a, b = await open_store(), await open_store()
    on_a = Recorder(a)
    await asyncio.gather(*(create(a if i % 2 else b, f"s{i}") for i in range(8)))
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")
    appended = await asyncio.gather(*(
        (a if i % 2 else b).append_messages(Scope(), f"s{i % 8}", [message], None)
        for i in range(40)))
    usage = session_pb2.Usage(prompt_tokens=3, cost_micros=5)
    recorded = await asyncio.gather(*(
        store.record_usage(Scope(), "s0", "m", usage, False, "req-1") for store in (a, b, a)))
    updated, update_revision = await b.update_session(
        Scope(), session_pb2.Session(id="s1", display_name="one"), ["display_name"], "")
    last = max([r.revision for r in appended] + [r.revision for r in recorded]
               + [update_revision])
    await on_a.wait_for(last)

    assert on_a.revisions == list(range(1, last + 1))
    assert len({r.revision for r in appended}) == 40
    for result in appended:
        assert result.session.revision == result.revision
        assert result.session.etag == str(result.revision)
        event = next(c.event for c in on_a.changes if c.revision == result.revision)
        assert event.session.revision == result.revision
        assert [m.seq for m in event.messages] == [m.seq for m in result.messages]
    # One request id: recorded once, the retries answer with the original's revision.
    assert sorted(r.duplicate for r in recorded) == [False, True, True]
    assert len({r.revision for r in recorded}) == 1
    assert recorded[0].revision <= last
    assert updated.revision == update_revision and updated.etag == str(update_revision)
    stored, read_at = await a.get_session(Scope(), "s1")
    assert stored.revision == update_revision and read_at >= last
    # The change log stores events serialised with provisional revisions; read back,
    # each carries its row's final revision.
    logged = await b.read_changes(1, last)
    assert [c.revision for c in logged] == list(range(1, last + 1))
    assert all(c.event.revision == c.revision for c in logged)
    assert all(c.event.session.revision == c.revision for c in logged
               if c.event.HasField("session"))
    assert await provisional_rows(database) == 0
    assert await a.check_consistency() == []


async def test_two_replicas_creating_one_session_id_at_once_both_answer(
        open_store: OpenStore) -> None:
    """The second INSERT of an id waits for the first's commit and loses on the unique key;
    its write runs again and answers as a retry does, never Unavailable."""
    a, b = await open_store(), await open_store()
    for round_ in range(10):
        sid = f"both-{round_}"
        results = await asyncio.gather(
            *(store.create_session(Scope(), session_pb2.Session(id=sid, display_name="x"))
              for store in (a, b, a, b)))
        assert sorted(created for _, created, _ in results) == [False, False, False, True]
        assert len({session.revision for session, _, _ in results}) == 1


async def test_purge_runs_alone_while_other_replicas_append(open_store: OpenStore,
                                                            database: str) -> None:
    a, b = await open_store(), await open_store()
    await asyncio.gather(*(create(a, f"p{i}") for i in range(20)))
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")
    purged, *_ = await asyncio.gather(
        b.purge_sessions(Scope(), 0, 5, [], False, 100),
        *(a.append_messages(Scope(), f"p{i}", [message], None) for i in range(15, 20)),
        return_exceptions=True)
    assert not isinstance(purged, BaseException), purged
    assert purged[0] == 15
    assert await provisional_rows(database) == 0
    assert await a.check_consistency() == []


async def lock_waits(conn: asyncpg.Connection, at_least: int) -> list[asyncpg.Record]:
    """The locks other connections to this database wait for, once at least
    ``at_least`` are waited for (the database has no event for it: poll). Each row:
    pid, locktype, rel (the relation, for a tuple lock) and on_me (whether it waits
    for ``conn``'s own transaction)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            waits = await conn.fetch(
                "SELECT l.pid, l.locktype, l.relation::regclass::text AS rel,"
                " l.transactionid = (SELECT backend_xid FROM pg_stat_activity"
                "  WHERE pid = pg_backend_pid()) AS on_me"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = current_database()"
                " AND l.pid <> pg_backend_pid()")
            if len(waits) >= at_least:
                return list(waits)
            await asyncio.sleep(0.01)


async def test_a_write_chosen_to_break_a_deadlock_runs_again(
        open_store: OpenStore, database: str) -> None:
    """A batch locks s1 and then waits for s2, which another transaction holds while it
    asks for s1. PostgreSQL fails one of the two waits; when it picks the batch's write,
    the batch (run without savepoints first) rolls back whole and runs again with a
    savepoint per write once the other one is gone: both appends are answered, none
    fails."""
    store = await open_store()
    await create(store, "s1")
    await create(store, "s2")
    other = await asyncpg.connect(database)
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")
    try:
        await other.execute("BEGIN")
        await other.execute("SELECT 1 FROM sessions WHERE id = 's2' FOR UPDATE")
        appends = asyncio.gather(
            store.append_messages(Scope(), "s1", [message], None),
            store.append_messages(Scope(), "s2", [message], None))
        await lock_waits(other, 1)  # until the batch waits for s2
        deadlocked = False
        try:
            await other.execute("SELECT 1 FROM sessions WHERE id = 's1' FOR UPDATE")
        except asyncpg.DeadlockDetectedError:
            deadlocked = True
        await other.execute("ROLLBACK")
        first, second = await asyncio.wait_for(appends, DEADLINE)
    finally:
        await other.close()
    assert [m.seq for m in first.messages] == [1] and [m.seq for m in second.messages] == [1]
    assert second.revision == first.revision + 1
    rerun = store.writer.stats.rollbacks == 1
    assert deadlocked or rerun or store.writer_stats[0] == 4, \
        "no deadlock: the appends ran apart"
    assert await store.check_consistency() == []


async def test_a_batch_whose_notice_is_lost_is_answered_from_the_session_setting(
        open_store: OpenStore, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter's base comes back in a NOTICE after the one-message COMMIT; should
    it not arrive, the writer reads it back from the session setting the same block
    set, rather than report a committed batch as failed."""
    monkeypatch.setattr(asyncpg.Connection, "add_log_listener", lambda self, fn: None)
    monkeypatch.setattr(asyncpg.Connection, "remove_log_listener", lambda self, fn: None)
    store = await open_store()
    assert await create(store, "a") == 1
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")
    answers = await asyncio.gather(*(
        store.append_messages(Scope(), "a", [message], None) for _ in range(3)))
    assert sorted(a.revision for a in answers) == [2, 3, 4]
    assert sorted(m.seq for a in answers for m in a.messages) == [1, 2, 3]
    assert store.revision == 4
    assert await provisional_rows(database) == 0
    assert await store.check_consistency() == []


async def test_replicas_batches_wait_for_each_other_only_at_the_counter(
        open_store: OpenStore, database: str) -> None:
    """Two replicas' batches in flight at once: each inserts its change-log rows at
    provisional revisions of its own connection's range, so neither waits at that
    INSERT for the other to commit; both wait only for the counter. Held here by a
    third transaction that locks the counter row: both batches must wait for that
    row, and neither for the other batch's transaction."""
    first, second = await open_store(), await open_store()
    await create(first, "a")
    await create(second, "b")
    blocker = await asyncpg.connect(database)
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="hi")
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
        appends = asyncio.gather(
            first.append_messages(Scope(), "a", [message], None),
            second.append_messages(Scope(), "b", [message], None))
        # What each waits for: the counter row (its tuple lock, or the blocker's
        # transaction, which holds the row) or, wrongly, the other batch.
        waits = await lock_waits(blocker, 2)
        assert len(waits) == 2, [dict(w) for w in waits]
        assert all((w["locktype"] == "tuple" and w["rel"] == "meta") or w["on_me"]
                   for w in waits), [dict(w) for w in waits]
        await blocker.execute("ROLLBACK")
        answered = await asyncio.wait_for(appends, DEADLINE)
    finally:
        await blocker.close()
    assert sorted(r.revision for r in answered) == [3, 4]
    assert await provisional_rows(database) == 0
    assert await first.check_consistency() == []


async def test_a_replica_far_behind_catches_up_in_steps_bounded_in_bytes(
        open_store: OpenStore) -> None:
    writer = await open_store()
    follower = await open_store(poll_interval_seconds=3600.0)
    await far_behind_replica_catches_up_in_bounded_steps(writer, follower)


async def test_an_initial_state_left_idle_lets_its_snapshot_go(open_store: OpenStore) -> None:
    await initial_state_left_idle_lets_its_snapshot_go(await open_store())


async def test_held_snapshots_are_bounded_and_an_idle_one_gives_its_turn_back(
        open_store: OpenStore) -> None:
    await held_snapshots_are_bounded_and_an_idle_one_gives_its_turn_back(await open_store())
