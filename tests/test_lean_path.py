"""The lean serving path keeps every answer: inline reads with their fallback, the
request-wide check that walks only what can be wrong, many watchers of one commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    message_service_pb2,
    session_pb2,
    session_service_pb2,
)
from sessiond_server.auth import request_violations
from sessiond_server.config import wall_clock_micros
from sessiond_server.store.interface import MessageQuery, Scope
from sessiond_server.store.sqlite import SQLiteStore
from sessiond_server.store.sqlite_inline import Busy, InlineReader

ss = session_service_pb2
ms = message_service_pb2


async def test_the_inline_reader_refuses_a_second_snapshot_until_the_first_ends(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock_micros)
    await store.open()
    await store.close()
    reader = InlineReader(tmp_path / "s.db")
    reader.open()
    try:
        statements = reader.begin()
        assert await statements.fetch("SELECT value FROM meta WHERE key = 'revision'") == [(0,)]
        with pytest.raises(Busy):
            reader.begin()
        reader.end()
        reader.begin()
        reader.end()
    finally:
        reader.close()
    with pytest.raises(Busy):  # closed: the caller reads on a thread instead
        reader.begin()


async def test_the_inline_reader_rolls_back_a_transaction_left_open_before_it_reads(
        tmp_path: Path) -> None:
    """A transaction left open on the inline connection (an ``end`` whose ROLLBACK
    failed) is rolled back by the next ``begin``, which then reads a new snapshot:
    small reads never stay stuck on an old one, nor fail, until a restart."""
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock_micros)
    await store.open()
    try:
        scope = Scope()
        await store.create_session(scope, session_pb2.Session(id="a"))
        conn = store._inline._conn
        assert conn is not None
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sessions").fetchall()  # holds this snapshot
        await store.create_session(scope, session_pb2.Session(id="b"))
        session, revision = await store.get_session(scope, "b")
        assert session.id == "b" and revision == store.revision
        assert not conn.in_transaction
    finally:
        await store.close()


async def test_small_reads_answer_from_a_reader_thread_while_the_inline_one_is_taken(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", clock=wall_clock_micros)
    await store.open()
    try:
        scope = Scope()
        await store.create_session(scope, session_pb2.Session(id="a"))
        await store.append_messages(scope, "a", [message_pb2.Message(
            role=message_pb2.ROLE_USER, content=f"m{i}") for i in range(3)], None)
        inline_session, inline_revision = await store.get_session(scope, "a")
        inline_page = await store.list_messages(scope, "a", MessageQuery(last_n=2))
        store._inline.begin()  # what a snapshot left open across an await would do
        try:
            session, revision = await store.get_session(scope, "a")
            page = await store.list_messages(scope, "a", MessageQuery(last_n=2))
        finally:
            store._inline.end()
        assert (session, revision) == (inline_session, inline_revision)
        assert [m.content for m in page.messages] == ["m1", "m2"]
        assert list(page.messages) == list(inline_page.messages)
        assert page.revision == inline_page.revision == revision
    finally:
        await store.close()


def test_request_violations_are_found_with_and_without_zero_bytes() -> None:
    deep = ms.AppendMessagesRequest(session_id="s", messages=[
        message_pb2.Message(role=message_pb2.ROLE_USER, content="fine"),
        message_pb2.Message(role=message_pb2.ROLE_USER, metadata={"k": "v\x00"})])
    deep.messages[0].created_at.seconds = 300_000_000_000  # year 11,476
    found = dict(request_violations(deep))
    assert set(found) == {"messages[0].created_at", "messages[1].metadata['k']"}
    # No string holds NUL (no zero byte on the wire): only the Timestamp walk runs.
    stamp_only = ms.ListMessagesRequest(session_id="s")
    stamp_only.after_time.seconds = -70_000_000_000
    assert [f for f, _ in request_violations(stamp_only)] == ["after_time"]
    assert request_violations(ms.AppendMessagesRequest(session_id="s", messages=[
        message_pb2.Message(role=message_pb2.ROLE_USER, content="x" * 1000)])) == []


async def _events(stream: object, count: int) -> list[event_pb2.SessionEvent]:
    events: list[event_pb2.SessionEvent] = []
    while len(events) < count:
        response = await stream.read()  # type: ignore[attr-defined]
        if response.type == ss.WATCH_RESPONSE_TYPE_EVENTS:
            events.extend(response.events)
    return events


async def test_watchers_of_everything_and_filtered_watchers_each_get_their_own_events(
        server: Any) -> None:
    everything = [server.sessions.WatchSessions(ss.WatchSessionsRequest()) for _ in range(3)]
    only_b = server.sessions.WatchSessions(ss.WatchSessionsRequest(
        filter=ss.WatchFilter(session_ids=["b"])))
    for stream in (*everything, only_b):  # each is open once CREATED arrives
        created = await stream.read()  # type: ignore[attr-defined]
        assert created.type == ss.WATCH_RESPONSE_TYPE_CREATED
    for session_id in ("a", "b", "a"):
        await server.sessions.TouchSession(ss.TouchSessionRequest(
            session=session_pb2.Session(id=session_id)))
    seen = await asyncio.gather(*(_events(s, 2) for s in everything),
                                _events(only_b, 1))
    for stream in (*everything, only_b):
        stream.cancel()  # type: ignore[attr-defined]
    whole = [(e.session_id, e.revision) for e in seen[0]]
    assert [e.session_id for e in seen[0]] == ["a", "b"]
    for other in seen[1:3]:
        assert [(e.session_id, e.revision) for e in other] == whole
    assert [e.session_id for e in seen[3]] == ["b"]
