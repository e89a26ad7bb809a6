"""Answers that carry only what was asked for: AppendMessages' LEAN view and a listing's
total_size counted once (or not at all), through a real server on every backend.

The rules are the proto's (AppendView, ListSessionsRequest.skip_total_size,
ListSessionsResponse.total_size); these tests hold the server to them, including the
retry of an append (answered in the view the retry asks for) and what watchers see (the
same whatever the view).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import sessiond
from harness import append, create_session, expect_bad_request, expect_failure, get_session, user
from sessiond.v1 import message_pb2, session_pb2
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_service_pb2 as ss
from sessiond_server.api.page_tokens import PageTokens, request_digest
from sessiond_server.store import Scope
from watch_validator import watch_until

LEAN = ms.APPEND_VIEW_LEAN
FULL = ms.APPEND_VIEW_FULL


def lean_message(stored: message_pb2.Message) -> message_pb2.Message:
    """What the LEAN view answers of a stored message, and nothing else."""
    expected = message_pb2.Message(seq=stored.seq, id=stored.id)
    expected.created_at.CopyFrom(stored.created_at)
    return expected


def lean_session(session: session_pb2.Session) -> session_pb2.Session:
    """What the LEAN view answers of a session, and nothing else."""
    expected = session_pb2.Session(
        id=session.id, status=session.status, last_seq=session.last_seq,
        message_count=session.message_count, revision=session.revision, etag=session.etag)
    expected.last_activity_at.CopyFrom(session.last_activity_at)
    if session.HasField("last_event_at"):
        expected.last_event_at.CopyFrom(session.last_event_at)
    return expected


async def stored_messages(server: Any, session_id: str) -> list[message_pb2.Message]:
    page = await server.messages.ListMessages(ms.ListMessagesRequest(session_id=session_id))
    return list(page.messages)


# -- AppendMessages view ----------------------------------------------------------------


async def test_a_lean_append_answers_each_seq_id_and_time_and_the_sessions_guards_only(
        server: Any) -> None:
    await create_session(server.sessions, "s", agent="clamps", goal="a goal", labels={"a": "b"})
    answer = await append(server.messages, "s", user("first", id="m1"),
                          user("second " * 100, metadata={"k": "v"}), view=LEAN)
    assert answer.revision > 0
    stored = await stored_messages(server, "s")
    assert [m.content for m in stored] == ["first", "second " * 100]  # stored whole
    assert list(answer.messages) == [lean_message(m) for m in stored]
    assert [(m.seq, m.id) for m in answer.messages] == [(1, "m1"), (2, "")]
    now = await get_session(server.sessions, "s")
    assert answer.session == lean_session(now)
    assert (answer.session.last_seq, answer.session.revision) == (2, answer.revision)
    assert answer.session.status == session_pb2.SESSION_STATUS_ACTIVE
    # The guards it carries are the ones the next writes take.
    await append(server.messages, "s", user("third"), view=LEAN,
                 expected_last_seq=answer.session.last_seq)
    await server.sessions.UpdateSession(ss.UpdateSessionRequest(
        session=session_pb2.Session(id="s", display_name="renamed"),
        update_mask={"paths": ["display_name"]},
        etag=(await get_session(server.sessions, "s")).etag))
    stale = append(server.messages, "s", user("fourth"), view=LEAN,
                   expected_last_seq=answer.session.last_seq)
    await expect_failure(stale, grpc.StatusCode.ABORTED, "LAST_SEQ_MISMATCH")


async def test_unspecified_and_full_views_answer_the_stored_messages_and_session_whole(
        server: Any) -> None:
    await create_session(server.sessions, "s", agent="clamps", goal="a goal")
    unspecified = await append(server.messages, "s", user("one", id="m1"))
    full = await append(server.messages, "s", user("two", id="m2", metadata={"k": "v"}),
                        view=FULL)
    stored = await stored_messages(server, "s")
    assert [*unspecified.messages, *full.messages] == stored
    assert full.session == await get_session(server.sessions, "s")
    assert (full.session.agent, full.session.goal) == ("clamps", "a goal")


async def test_a_retry_answers_the_original_append_in_the_view_it_asks_for(
        server: Any) -> None:
    await create_session(server.sessions, "s")
    first = await append(server.messages, "s", user("hello", id="m1"), user("again", id="m2"),
                         view=LEAN)
    await server.sessions.EndSession(ss.EndSessionRequest(
        session_id="s", status=session_pb2.SESSION_STATUS_COMPLETED))
    # Retried after the session ended and with a stale guard: idempotency comes first.
    lean_retry = await append(server.messages, "s", user("hello", id="m1"),
                              user("again", id="m2"), view=LEAN, expected_last_seq=0)
    full_retry = await append(server.messages, "s", user("hello", id="m1"),
                              user("again", id="m2"), view=FULL)
    stored = await stored_messages(server, "s")
    now = await get_session(server.sessions, "s")
    assert lean_retry.revision == full_retry.revision == 0
    assert list(lean_retry.messages) == list(first.messages) == [lean_message(m) for m in stored]
    assert lean_retry.session == lean_session(now)
    assert lean_retry.session.status == session_pb2.SESSION_STATUS_COMPLETED
    assert list(full_retry.messages) == stored and full_retry.session == now
    # A retry with other content is still a conflict, in either view.
    other = append(server.messages, "s", user("changed", id="m1"), view=LEAN)
    await expect_failure(other, grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_CONFLICT")


async def test_a_partly_stored_lean_append_answers_old_and_new_messages_in_request_order(
        server: Any) -> None:
    await create_session(server.sessions, "s")
    await append(server.messages, "s", user("one", id="m1"))
    answer = await append(server.messages, "s", user("zero", id="m0"), user("one", id="m1"),
                          user("two"), view=LEAN)
    stored = {m.seq: m for m in await stored_messages(server, "s")}
    assert [(m.seq, m.id) for m in answer.messages] == [(2, "m0"), (1, "m1"), (3, "")]
    assert list(answer.messages) == [lean_message(stored[m.seq]) for m in answer.messages]


async def test_watchers_see_the_same_event_whatever_the_view(server: Any) -> None:
    for session_id in ("full", "lean"):
        await create_session(server.sessions, session_id)
    long_text = "word " * 2000  # more than an event carries: it is cut in both
    messages = [user(long_text, id="m1"), user("short", id="m2", metadata={"k": "v"})]
    full = await append(server.messages, "full", *messages, view=FULL)
    lean = await append(server.messages, "lean", *messages, view=LEAN)
    stream = await watch_until(server.sessions, lean.revision, start_revision=full.revision)
    events = {e.session_id: e for e in stream.events}
    assert set(events) == {"full", "lean"}
    a, b = events["full"], events["lean"]
    assert a.messages_truncated and b.messages_truncated
    assert len(b.messages[0].content.encode()) < len(long_text)
    for event in (a, b):
        event.session.ClearField("id")
        event.session.ClearField("revision")
        event.session.ClearField("etag")
        event.session.ClearField("started_at")
        event.session.ClearField("last_activity_at")
        event.session.ClearField("updated_at")
        for message in event.messages:
            message.ClearField("session_id")
            message.ClearField("created_at")
            message.ClearField("updated_at")
    assert list(a.messages) == list(b.messages) and a.session == b.session


async def test_an_unknown_view_is_invalid_argument_naming_the_field(server: Any) -> None:
    await create_session(server.sessions, "s")
    await expect_bad_request(append(server.messages, "s", user(), view=7), "view")


async def test_the_python_clients_take_a_view(server: Any) -> None:
    await create_session(server.sessions, "s")
    async with sessiond.AsyncClient(server.address) as client:
        answer = await client.append_messages(session_id="s", messages=[user("a", id="m1")],
                                              view=LEAN)
    assert answer.session.last_seq == 1 and not answer.messages[0].content

    def sync_append() -> ms.AppendMessagesResponse:
        with sessiond.Client(server.address) as client:
            return client.append_messages(session_id="s", messages=[user("b", id="m2")],
                                          view=LEAN)

    answer = await asyncio.to_thread(sync_append)
    assert answer.session.last_seq == 2 and not answer.messages[0].content


# -- ListSessions total_size ---------------------------------------------------------------


async def walk_listing(server: Any, page_size: int, between: Any
                       ) -> list[ss.ListSessionsResponse]:
    """Every page of a listing; ``between`` (a coroutine function) runs after the first."""
    pages: list[ss.ListSessionsResponse] = []
    token = ""
    while True:
        page = await server.sessions.ListSessions(
            ss.ListSessionsRequest(page_size=page_size, page_token=token))
        pages.append(page)
        if len(pages) == 1:
            await between()
        token = page.next_page_token
        if not token:
            return pages


async def test_total_size_is_counted_on_the_first_page_and_carried_by_the_token(
        server: Any) -> None:
    for i in range(5):
        await create_session(server.sessions, f"s{i}")

    async def more() -> None:
        for i in range(5, 7):
            await create_session(server.sessions, f"s{i}")

    pages = await walk_listing(server, 2, between=more)
    # The two created after the first page sort before it (newest activity first), so
    # the walk meets the five; every page answers the first page's count.
    assert sum(len(p.sessions) for p in pages) == 5
    assert [p.total_size for p in pages] == [5, 5, 5]
    fresh = await server.sessions.ListSessions(ss.ListSessionsRequest(page_size=2))
    assert fresh.total_size == 7


async def test_skip_total_size_answers_zero_and_a_later_page_that_does_not_skip_counts(
        server: Any) -> None:
    for i in range(5):
        await create_session(server.sessions, f"s{i}", agent="a" if i % 2 else "b")
    request = ss.ListSessionsRequest(page_size=2, skip_total_size=True,
                                     filter=session_pb2.SessionFilter(agents=["b"]))
    first = await server.sessions.ListSessions(request)
    assert first.total_size == 0 and len(first.sessions) == 2
    request.page_token, request.skip_total_size = first.next_page_token, False
    second = await server.sessions.ListSessions(request)
    assert second.total_size == 3 and len(second.sessions) == 1
    assert not second.next_page_token
    # A counted page's token carries its count; a page that skips answers 0 all the same.
    request = ss.ListSessionsRequest(page_size=1)
    counted = await server.sessions.ListSessions(request)
    await create_session(server.sessions, "late")
    request.page_token = counted.next_page_token
    carried = await server.sessions.ListSessions(request)
    request.page_token, request.skip_total_size = carried.next_page_token, True
    skipped = await server.sessions.ListSessions(request)
    request.page_token, request.skip_total_size = skipped.next_page_token, False
    recounted = await server.sessions.ListSessions(request)
    assert [counted.total_size, carried.total_size, skipped.total_size,
            recounted.total_size] == [5, 5, 0, 6]


async def test_a_token_that_carries_no_count_is_counted_again(server: Any) -> None:
    """Tokens issued before the count was carried hold the cursor alone: still valid."""
    for i in range(3):
        await create_session(server.sessions, f"s{i}")
    first = await server.sessions.ListSessions(ss.ListSessionsRequest(
        page_size=1, order_by=ss.SESSION_ORDER_FIELD_STARTED_AT, ascending=True))
    config = server.running.config
    tokens = PageTokens(config.page_token_key or server.store.page_token_key)
    digest = request_digest(Scope(), session_pb2.SessionFilter(),
                            ss.SESSION_ORDER_FIELD_STARTED_AT, True)
    cursor_only = tokens.encode("sessions", digest, [
        first.sessions[0].started_at.ToMicroseconds(), first.sessions[0].id])
    await create_session(server.sessions, "late")
    page = await server.sessions.ListSessions(ss.ListSessionsRequest(
        page_size=1, order_by=ss.SESSION_ORDER_FIELD_STARTED_AT, ascending=True,
        page_token=cursor_only))
    assert page.total_size == 4 and page.sessions[0].id != first.sessions[0].id


@pytest.mark.parametrize("client_kind", ["async", "sync"])
async def test_the_python_clients_walk_every_session_and_can_skip_the_count(
        server: Any, client_kind: str) -> None:
    for i in range(7):
        await create_session(server.sessions, f"s{i}")
    if client_kind == "async":
        async with sessiond.AsyncClient(server.address) as client:
            ids = [s.id async for s in client.iter_sessions(page_size=3)]
            page = await client.list_sessions(page_size=3, skip_total_size=True)
    else:
        def walk() -> tuple[list[str], ss.ListSessionsResponse]:
            with sessiond.Client(server.address) as client:
                return ([s.id for s in client.iter_sessions(page_size=3)],
                        client.list_sessions(page_size=3, skip_total_size=True))
        ids, page = await asyncio.to_thread(walk)
    assert sorted(ids) == [f"s{i}" for i in range(7)]
    assert page.total_size == 0 and len(page.sessions) == 3
