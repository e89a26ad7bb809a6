"""MessageService, black box: append (idempotent by message id, guarded by expected_last_seq),
the ListMessages modes, pop, streaming updates of the last message, clear, and search.

Every test that writes messages ends by checking that the session's counters equal a
recount of what ListMessages returns.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2
from harness import (
    append,
    assert_counters_match_recount,
    assistant,
    create_session,
    expect_bad_request,
    expect_failure,
    get_session,
    list_all_messages,
    micros,
    system,
    timestamp,
    tool,
    user,
)
from sessiond.v1 import message_pb2 as mp
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ABORTED = grpc.StatusCode.ABORTED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def counters_ok(server, session_id: str) -> None:
    await assert_counters_match_recount(server.sessions, server.messages, session_id)


async def list_messages(server, session_id: str, **fields) -> ms.ListMessagesResponse:
    return await server.messages.ListMessages(
        ms.ListMessagesRequest(session_id=session_id, **fields)
    )


def seqs(items) -> list[int]:
    return [m.seq for m in items]


async def numbered(server, session_id: str, count: int) -> None:
    """Append ``count`` user messages "m1".."mN" (in batches of at most 100)."""
    for start in range(0, count, 100):
        batch = [user(f"m{i + 1}") for i in range(start, min(count, start + 100))]
        await append(server.messages, session_id, *batch)


# AppendMessages --------------------------------------------------------------------------


async def test_append_numbers_messages_in_order_from_one(server):
    created = await create_session(server.sessions, "s1")
    now = server.clock.advance(5)
    answer = await append(
        server.messages, "s1", system(), user("hi"), assistant("hello", tool_calls=1)
    )
    assert seqs(answer.messages) == [1, 2, 3]
    assert [m.content for m in answer.messages] == ["be brief", "hi", "hello"]
    for m in answer.messages:
        assert m.session_id == "s1"
        assert micros(m.created_at) == now
        assert m.status == mp.MESSAGE_STATUS_COMPLETE  # UNSPECIFIED is stored as COMPLETE
    s = answer.session
    assert (s.message_count, s.turn_count, s.tool_call_count, s.last_seq) == (3, 1, 1, 3)
    assert micros(s.last_activity_at) == now
    assert answer.revision > created.revision
    assert s.revision == answer.revision
    stored = await list_all_messages(server.messages, "s1")
    assert list(stored) == list(answer.messages)
    await counters_ok(server, "s1")


async def test_append_ignores_client_seq_session_id_and_timestamps(server):
    await create_session(server.sessions, "s1")
    forged = user(
        "x", seq=99, session_id="other", created_at=timestamp(1_000_000),
        updated_at=timestamp(1_000_000),
    )
    answer = await append(server.messages, "s1", forged)
    m = answer.messages[0]
    assert (m.seq, m.session_id) == (1, "s1")
    assert micros(m.created_at) == server.clock.now_micros()


async def test_append_keeps_every_message_field(server):
    await create_session(server.sessions, "s1")
    sent = mp.Message(
        id="m-1",
        role=mp.ROLE_ASSISTANT,
        content="answer",
        name="bot",
        tool_calls=[mp.ToolCall(id="c1", name="search", arguments_json='{"q": 1}')],
        reasoning="because",
        content_blocks=[
            mp.ContentBlock(type="text", json='{"text": "answer"}'),
            mp.ContentBlock(type="image", raw=b"\x00\x01"),
        ],
        provider_response_id="resp-1",
        status=mp.MESSAGE_STATUS_INCOMPLETE,
        metadata={"k": "v"},
    )
    answer = await append(server.messages, "s1", sent)
    stored = (await list_all_messages(server.messages, "s1"))[0]
    expected = mp.Message()
    expected.CopyFrom(sent)
    expected.session_id = "s1"
    expected.seq = 1
    expected.created_at.CopyFrom(stored.created_at)
    expected.updated_at.CopyFrom(stored.updated_at)
    assert stored == expected
    assert answer.messages[0] == stored


async def test_append_counts_turns_as_assistant_messages_with_content(server):
    await create_session(server.sessions, "s1")
    answer = await append(
        server.messages, "s1",
        user("weather?"),
        assistant("", tool_calls=2),
        tool("sunny", "call-0"),
        tool("warm", "call-1"),
        assistant("sunny and warm"),
    )
    s = answer.session
    assert (s.message_count, s.turn_count, s.tool_call_count) == (5, 1, 2)
    await counters_ok(server, "s1")


async def test_append_retry_with_the_same_ids_returns_the_stored_messages_and_revision_zero(
    server,
):
    await create_session(server.sessions, "s1")
    first = await append(server.messages, "s1", user("a", id="u1"), assistant("b", id="a1"))
    server.clock.advance(5)
    again = await append(server.messages, "s1", user("a", id="u1"), assistant("b", id="a1"))
    assert again.revision == 0
    assert list(again.messages) == list(first.messages)
    assert again.session.message_count == 2
    assert again.session.revision == first.revision
    await counters_ok(server, "s1")


async def test_append_with_a_retried_and_a_new_message_stores_only_the_new_one(server):
    await create_session(server.sessions, "s1")
    first = await append(server.messages, "s1", user("a", id="u1"))
    answer = await append(server.messages, "s1", user("a", id="u1"), assistant("b", id="a1"))
    assert seqs(answer.messages) == [1, 2]
    assert answer.messages[0] == first.messages[0]
    assert answer.revision > first.revision
    assert answer.session.message_count == 2
    await counters_ok(server, "s1")


@pytest.mark.parametrize(
    "conflicting", [user("changed", id="u1"), assistant("a", id="u1")], ids=["content", "role"]
)
async def test_append_same_id_with_other_content_or_role_fails_and_stores_nothing(
    server, conflicting
):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a", id="u1"))
    await expect_failure(
        append(server.messages, "s1", user("new", id="u2"), conflicting),
        grpc.StatusCode.ALREADY_EXISTS,
        "MESSAGE_ID_CONFLICT",
    )
    stored = await list_all_messages(server.messages, "s1")
    assert [(m.id, m.content) for m in stored] == [("u1", "a")]
    await counters_ok(server, "s1")


async def test_append_with_current_expected_last_seq_succeeds(server):
    await create_session(server.sessions, "s1")
    first = await append(server.messages, "s1", user("a"), expected_last_seq=0)
    answer = await append(server.messages, "s1", assistant("b"), expected_last_seq=1)
    assert seqs(first.messages) == [1]
    assert seqs(answer.messages) == [2]


async def test_append_with_stale_expected_last_seq_is_aborted_and_stores_nothing(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a"), assistant("b"))
    await expect_failure(
        append(server.messages, "s1", user("late"), expected_last_seq=1),
        ABORTED,
        "LAST_SEQ_MISMATCH",
    )
    assert (await get_session(server.sessions, "s1")).message_count == 2
    await counters_ok(server, "s1")


async def test_append_with_no_messages_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(append(server.messages, "s1"), "messages")


async def test_append_message_without_role_names_it_and_stores_nothing(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        append(server.messages, "s1", user("ok"), mp.Message(content="no role")),
        "messages[1].role",
    )
    assert await list_all_messages(server.messages, "s1") == []


async def test_append_to_missing_session_is_not_found(server):
    await expect_failure(
        append(server.messages, "nope", user("x")), NOT_FOUND, "SESSION_NOT_FOUND"
    )
    listed = await server.sessions.ListSessions(ss.ListSessionsRequest())
    assert listed.total_size == 0  # appending never creates a session


async def test_append_without_session_id_is_invalid_argument(server):
    await expect_bad_request(append(server.messages, "", user("x")), "session_id")


# Writes to ended or missing sessions ------------------------------------------------------


def message_writes(session_id: str):
    return {
        "append": lambda s: append(s.messages, session_id, user("x")),
        "pop": lambda s: s.messages.PopMessage(ms.PopMessageRequest(session_id=session_id)),
        "update": lambda s: s.messages.UpdateLastMessage(
            ms.UpdateLastMessageRequest(session_id=session_id, message=user("y"))
        ),
        "clear": lambda s: s.messages.ClearMessages(
            ms.ClearMessagesRequest(session_id=session_id)
        ),
    }


@pytest.mark.parametrize("write", ["append", "pop", "update", "clear"])
async def test_message_writes_to_an_ended_session_fail_with_session_ended(server, write):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a"), assistant("b"))
    await server.sessions.EndSession(
        ss.EndSessionRequest(session_id="s1", status=sp.SESSION_STATUS_COMPLETED)
    )
    await expect_failure(
        message_writes("s1")[write](server), FAILED_PRECONDITION, "SESSION_ENDED"
    )
    stored = await list_all_messages(server.messages, "s1")
    assert [m.content for m in stored] == ["a", "b"]


@pytest.mark.parametrize("write", ["append", "pop", "update", "clear"])
async def test_message_writes_to_a_missing_session_are_not_found(server, write):
    await expect_failure(message_writes("nope")[write](server), NOT_FOUND, "SESSION_NOT_FOUND")


# ListMessages ----------------------------------------------------------------------------


async def test_list_messages_pages_forward_oldest_first(server):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 7)
    pages = []
    token = ""
    while True:
        page = await list_messages(server, "s1", page_size=3, page_token=token)
        pages.append(seqs(page.messages))
        token = page.next_page_token
        if not token:
            break
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]


async def test_list_messages_pages_backward_newest_first(server):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 7)
    pages = []
    token = ""
    while True:
        page = await list_messages(
            server, "s1", page_size=3, page_token=token, descending=True
        )
        pages.append(seqs(page.messages))
        token = page.next_page_token
        if not token:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]


async def test_list_messages_default_page_size_is_100(server):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 120)
    page = await list_messages(server, "s1")
    assert seqs(page.messages) == list(range(1, 101))
    assert page.next_page_token
    rest = await list_messages(server, "s1", page_token=page.next_page_token)
    assert seqs(rest.messages) == list(range(101, 121))
    assert rest.next_page_token == ""


async def test_list_messages_of_an_empty_session_is_empty(server):
    await create_session(server.sessions, "s1")
    page = await list_messages(server, "s1")
    assert (list(page.messages), page.next_page_token) == ([], "")


@pytest.mark.parametrize("page_size", [-1, 1001])
async def test_list_messages_with_out_of_range_page_size_is_invalid_argument(server, page_size):
    await create_session(server.sessions, "s1")
    await expect_bad_request(list_messages(server, "s1", page_size=page_size), "page_size")


async def test_list_messages_accepts_page_size_1000(server):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 3)
    page = await list_messages(server, "s1", page_size=1000)
    assert seqs(page.messages) == [1, 2, 3]


async def test_list_messages_after_seq_returns_only_later_messages(server):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 6)
    page = await list_messages(server, "s1", after_seq=4)
    assert seqs(page.messages) == [5, 6]
    newest_first = await list_messages(server, "s1", after_seq=2, descending=True, page_size=2)
    assert seqs(newest_first.messages) == [6, 5]
    more = await list_messages(
        server, "s1", after_seq=2, descending=True, page_size=2,
        page_token=newest_first.next_page_token,
    )
    assert seqs(more.messages) == [4, 3]


async def test_list_messages_after_time_returns_messages_created_at_or_after_it(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("early1"), user("early2"))
    later = server.clock.advance(10)
    await append(server.messages, "s1", user("late1"))
    server.clock.advance(10)
    await append(server.messages, "s1", user("late2"))
    page = await list_messages(server, "s1", after_time=timestamp(later))
    assert [m.content for m in page.messages] == ["late1", "late2"]


async def test_list_messages_last_n_returns_the_newest_oldest_first(server):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 10)
    page = await list_messages(server, "s1", last_n=3)
    assert seqs(page.messages) == [8, 9, 10]
    assert page.next_page_token == ""
    everything = await list_messages(server, "s1", last_n=50)
    assert seqs(everything.messages) == list(range(1, 11))


@pytest.mark.parametrize("last_n", [-1, 1001])
async def test_list_messages_last_n_out_of_range_is_invalid_argument(server, last_n):
    await create_session(server.sessions, "s1")
    await expect_bad_request(list_messages(server, "s1", last_n=last_n), "last_n")


@pytest.mark.parametrize("last_turns", [-1, 1001])
async def test_list_messages_last_turns_out_of_range_is_invalid_argument(server, last_turns):
    await create_session(server.sessions, "s1")
    await expect_bad_request(list_messages(server, "s1", last_turns=last_turns), "last_turns")


@pytest.mark.parametrize(
    "fields",
    [
        {"last_n": 2, "page_size": 10},
        {"last_n": 2, "after_seq": 1},
        {"last_n": 2, "descending": True},
        {"last_turns": 1, "page_size": 10},
        {"last_turns": 1, "last_n": 1},
        {"last_turns": 1, "after_time": timestamp(1)},
    ],
    ids=["last_n+page_size", "last_n+after_seq", "last_n+descending", "last_turns+page_size",
         "last_turns+last_n", "last_turns+after_time"],
)
async def test_list_messages_mixing_modes_is_invalid_argument(server, fields):
    await create_session(server.sessions, "s1")
    await numbered(server, "s1", 3)
    await expect_failure(
        list_messages(server, "s1", **fields), grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST"
    )


async def conversation_of_three_turns(server, session_id: str) -> None:
    await create_session(server.sessions, session_id)
    await append(
        server.messages, session_id,
        system("setup"),                    # 1, before any user message: first turn
        user("q1"),                         # 2  turn 1
        assistant("", tool_calls=1),        # 3
        tool("r", "call-0"),                # 4
        assistant("a1"),                    # 5
        user("q2"),                         # 6  turn 2
        assistant("", tool_calls=2),        # 7
        tool("r0", "call-0"),               # 8
        tool("r1", "call-1"),               # 9
        assistant("a2"),                    # 10
        user("q3"),                         # 11 turn 3
        assistant("", tool_calls=1),        # 12
        tool("r", "call-0"),                # 13
    )


@pytest.mark.parametrize(
    ("last_turns", "expected"),
    [(1, list(range(11, 14))), (2, list(range(6, 14))), (3, list(range(1, 14))),
     (10, list(range(1, 14)))],
)
async def test_list_messages_last_turns_start_at_user_messages(server, last_turns, expected):
    await conversation_of_three_turns(server, "s1")
    page = await list_messages(server, "s1", last_turns=last_turns)
    assert seqs(page.messages) == expected
    assert not page.truncated
    assert page.next_page_token == ""


async def test_list_messages_last_turns_keep_tool_results_with_their_call(server):
    await conversation_of_three_turns(server, "s1")
    page = await list_messages(server, "s1", last_turns=1)
    answered = {m.tool_call_id for m in page.messages if m.role == mp.ROLE_TOOL}
    called = {c.id for m in page.messages for c in m.tool_calls}
    assert answered == called == {"call-0"}
    assert page.messages[0].role == mp.ROLE_USER


async def test_list_messages_last_turns_without_user_messages_is_one_turn(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", system(), assistant("unprompted"))
    page = await list_messages(server, "s1", last_turns=1)
    assert seqs(page.messages) == [1, 2]


async def test_list_messages_last_turns_over_1000_messages_keeps_the_newest_and_truncates(
    server,
):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("start"))
    for start in range(0, 1099, 100):
        batch = [assistant(f"part {i}") for i in range(start, min(1099, start + 100))]
        await append(server.messages, "s1", *batch)
    page = await list_messages(server, "s1", last_turns=1)
    assert page.truncated
    assert seqs(page.messages) == list(range(101, 1101))


async def test_list_messages_of_missing_session_is_not_found(server):
    await expect_failure(list_messages(server, "nope"), NOT_FOUND, "SESSION_NOT_FOUND")


# PopMessage ------------------------------------------------------------------------------


async def test_pop_removes_the_last_message_and_updates_the_counters(server):
    await create_session(server.sessions, "s1")
    appended = await append(server.messages, "s1", user("q"), assistant("a", tool_calls=2))
    now = server.clock.advance(3)
    answer = await server.messages.PopMessage(ms.PopMessageRequest(session_id="s1"))
    assert answer.message == appended.messages[1]
    s = answer.session
    # last_seq is the highest number ever assigned: a pop does not lower it.
    assert (s.message_count, s.turn_count, s.tool_call_count, s.last_seq) == (1, 0, 0, 2)
    assert micros(s.last_activity_at) == now
    assert answer.revision > appended.revision
    assert s.revision == answer.revision
    assert seqs(await list_all_messages(server.messages, "s1")) == [1]
    await counters_ok(server, "s1")


async def test_popped_sequence_numbers_are_not_reused(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a"), user("b"), user("c"))
    await server.messages.PopMessage(ms.PopMessageRequest(session_id="s1"))
    await server.messages.PopMessage(ms.PopMessageRequest(session_id="s1"))
    popped = await get_session(server.sessions, "s1")
    assert popped.last_seq == 3
    answer = await append(server.messages, "s1", user("d"), expected_last_seq=3)
    assert seqs(answer.messages) == [4]
    assert seqs(await list_all_messages(server.messages, "s1")) == [1, 4]
    await counters_ok(server, "s1")


async def test_pop_on_an_empty_session_fails_with_session_empty(server):
    await create_session(server.sessions, "s1")
    await expect_failure(
        server.messages.PopMessage(ms.PopMessageRequest(session_id="s1")),
        FAILED_PRECONDITION,
        "SESSION_EMPTY",
    )


async def test_pop_with_expected_seq_of_the_last_message_succeeds(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a"), user("b"))
    answer = await server.messages.PopMessage(ms.PopMessageRequest(session_id="s1", expected_seq=2))
    assert answer.message.seq == 2


async def test_pop_with_stale_expected_seq_is_aborted_and_removes_nothing(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a"), user("b"))
    await expect_failure(
        server.messages.PopMessage(ms.PopMessageRequest(session_id="s1", expected_seq=1)),
        ABORTED,
        "LAST_SEQ_MISMATCH",
    )
    assert seqs(await list_all_messages(server.messages, "s1")) == [1, 2]


# UpdateLastMessage -----------------------------------------------------------------------


async def update_last(server, session_id: str, message: mp.Message, *paths: str, **fields):
    return await server.messages.UpdateLastMessage(
        ms.UpdateLastMessageRequest(
            session_id=session_id,
            message=message,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            **fields,
        )
    )


async def test_streaming_reply_is_a_placeholder_then_updates_in_place(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("tell me"))
    placeholder = await append(
        server.messages, "s1",
        mp.Message(role=mp.ROLE_ASSISTANT, id="r1", status=mp.MESSAGE_STATUS_IN_PROGRESS),
    )
    assert placeholder.session.turn_count == 0  # no content yet: not a turn
    created_at = micros(placeholder.messages[0].created_at)

    t1 = server.clock.advance(1)
    partial = await update_last(
        server, "s1", mp.Message(content="Hel", status=mp.MESSAGE_STATUS_IN_PROGRESS),
        expected_seq=2,
    )
    assert partial.message.content == "Hel"
    assert partial.message.status == mp.MESSAGE_STATUS_IN_PROGRESS
    assert partial.session.turn_count == 1  # content became non-empty
    assert micros(partial.message.updated_at) == t1
    assert partial.revision > placeholder.revision

    t2 = server.clock.advance(1)
    final = await update_last(
        server, "s1",
        mp.Message(content="Hello!", reasoning="think", status=mp.MESSAGE_STATUS_COMPLETE),
    )
    m = final.message
    assert (m.seq, m.id, m.role) == (2, "r1", mp.ROLE_ASSISTANT)
    assert (m.content, m.reasoning, m.status) == ("Hello!", "think", mp.MESSAGE_STATUS_COMPLETE)
    assert micros(m.created_at) == created_at
    assert micros(m.updated_at) == t2
    assert final.session.turn_count == 1
    assert final.session.message_count == 2
    assert final.session.last_seq == 2
    assert micros(final.session.last_activity_at) == t2
    stored = await list_all_messages(server.messages, "s1")
    assert stored[-1] == m
    await counters_ok(server, "s1")


async def test_update_last_message_to_empty_content_stops_counting_the_turn(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", assistant("text"))
    answer = await update_last(server, "s1", mp.Message(content=""))
    assert answer.session.turn_count == 0
    await counters_ok(server, "s1")


async def test_update_last_message_empty_mask_replaces_only_the_streaming_fields(server):
    await create_session(server.sessions, "s1")
    await append(
        server.messages, "s1",
        assistant("old", name="bot", provider_response_id="p1", metadata={"k": "v"}),
    )
    answer = await update_last(
        server, "s1",
        mp.Message(content="new", name="other", provider_response_id="p2", metadata={"x": "y"}),
    )
    m = answer.message
    assert m.content == "new"
    assert m.reasoning == ""
    assert m.status == mp.MESSAGE_STATUS_COMPLETE  # UNSPECIFIED stored as COMPLETE
    assert (m.name, m.provider_response_id, dict(m.metadata)) == ("bot", "p1", {"k": "v"})


async def test_update_last_message_with_mask_changes_named_fields_and_tool_call_count(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", assistant("calling", tool_calls=1, name="bot"))
    calls = [mp.ToolCall(id=f"c{i}", name="t", arguments_json="{}") for i in range(3)]
    answer = await update_last(
        server, "s1",
        mp.Message(content="ignored", tool_calls=calls, provider_response_id="p9"),
        "tool_calls", "provider_response_id",
    )
    m = answer.message
    assert m.content == "calling"
    assert [c.id for c in m.tool_calls] == ["c0", "c1", "c2"]
    assert m.provider_response_id == "p9"
    assert m.name == "bot"
    assert answer.session.tool_call_count == 3
    await counters_ok(server, "s1")


@pytest.mark.parametrize("path", ["role", "id", "seq", "nonsense"])
async def test_update_last_message_with_a_forbidden_mask_path_is_invalid_argument(server, path):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", assistant("a", id="m1"))
    await expect_bad_request(
        update_last(server, "s1", mp.Message(role=mp.ROLE_USER, id="m2", seq=7), path),
        "update_mask.paths[0]",
    )
    stored = await list_all_messages(server.messages, "s1")
    assert [(m.seq, m.id, m.role) for m in stored] == [(1, "m1", mp.ROLE_ASSISTANT)]


async def test_update_last_message_on_an_empty_session_fails_with_session_empty(server):
    await create_session(server.sessions, "s1")
    await expect_failure(
        update_last(server, "s1", mp.Message(content="x")), FAILED_PRECONDITION, "SESSION_EMPTY"
    )


async def test_update_last_message_with_stale_expected_seq_is_aborted(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("a"), assistant("b"))
    await expect_failure(
        update_last(server, "s1", mp.Message(content="c"), expected_seq=1),
        ABORTED,
        "LAST_SEQ_MISMATCH",
    )
    stored = await list_all_messages(server.messages, "s1")
    assert [m.content for m in stored] == ["a", "b"]


# ClearMessages ---------------------------------------------------------------------------


async def test_clear_removes_every_message_keeps_the_session_and_never_reuses_seqs(server):
    await create_session(server.sessions, "s1", agent="a1")
    await append(server.messages, "s1", user("a"), assistant("b", tool_calls=1), tool("c"))
    answer = await server.messages.ClearMessages(ms.ClearMessagesRequest(session_id="s1"))
    assert answer.removed_count == 3
    assert answer.revision > 0
    s = answer.session
    assert (s.message_count, s.turn_count, s.tool_call_count, s.last_seq) == (0, 0, 0, 3)
    assert s.agent == "a1"
    assert await list_all_messages(server.messages, "s1") == []
    again = await append(server.messages, "s1", user("after"))
    assert seqs(again.messages) == [4]
    await counters_ok(server, "s1")


async def test_clear_of_an_empty_session_changes_nothing(server):
    created = await create_session(server.sessions, "s1")
    answer = await server.messages.ClearMessages(ms.ClearMessagesRequest(session_id="s1"))
    assert (answer.removed_count, answer.revision) == (0, 0)
    assert answer.session.revision == created.revision


# SearchMessages --------------------------------------------------------------------------


async def search(server, query: str, **fields) -> ms.SearchMessagesResponse:
    return await server.messages.SearchMessages(ms.SearchMessagesRequest(query=query, **fields))


async def test_search_finds_messages_with_every_word_newest_first(server):
    await create_session(server.sessions, "a")
    await create_session(server.sessions, "b")
    await append(server.messages, "a", user("the quick brown fox"))
    server.clock.advance(1)
    await append(server.messages, "b", user("quick thinking"), assistant("brown quick bread"))
    server.clock.advance(1)
    await append(server.messages, "a", user("nothing relevant"))
    found = await search(server, "quick brown")
    assert [(m.session_id, m.content) for m in found.messages] == [
        ("b", "brown quick bread"),
        ("a", "the quick brown fox"),
    ]


async def test_search_is_limited_to_the_given_sessions(server):
    for sid in ("a", "b", "c"):
        await create_session(server.sessions, sid)
        await append(server.messages, sid, user(f"needle in {sid}"))
    found = await search(server, "needle", session_ids=["a", "c"])
    assert sorted(m.session_id for m in found.messages) == ["a", "c"]


async def test_search_pages_through_every_match_once(server):
    await create_session(server.sessions, "s1")
    for i in range(7):
        server.clock.advance(1)
        await append(server.messages, "s1", user(f"needle number {i}"))
    seen: list[int] = []
    token = ""
    while True:
        page = await search(server, "needle", page_size=3, page_token=token)
        assert len(page.messages) <= 3
        seen.extend(m.seq for m in page.messages)
        token = page.next_page_token
        if not token:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    "query",
    ['"foo" OR bar*', "'; DROP TABLE messages; --", "foo AND NOT bar", "NEAR(foo bar)",
     "content:foo", '"unbalanced', "foo^2 -bar"],
)
async def test_search_takes_query_syntax_literally(server, query):
    await create_session(server.sessions, "s1")
    await append(
        server.messages, "s1",
        user("foo"),
        user("barista"),
        user(f"the text {query} verbatim"),
    )
    found = await search(server, query)
    assert [m.seq for m in found.messages] == [3]
    assert len(await list_all_messages(server.messages, "s1")) == 3
    assert await server.check_consistency() == []


async def test_search_follows_updates_pops_and_clears(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("alpha"), assistant("beta"))
    await update_last(server, "s1", mp.Message(content="gamma"))
    assert list((await search(server, "beta")).messages) == []
    assert [m.seq for m in (await search(server, "gamma")).messages] == [2]
    await server.messages.PopMessage(ms.PopMessageRequest(session_id="s1"))
    assert list((await search(server, "gamma")).messages) == []
    await server.messages.ClearMessages(ms.ClearMessagesRequest(session_id="s1"))
    assert list((await search(server, "alpha")).messages) == []


@pytest.mark.parametrize("query", ["", "x" * 257])
async def test_search_with_empty_or_too_long_query_is_invalid_argument(server, query):
    await expect_bad_request(search(server, query), "query")


@pytest.mark.parametrize("page_size", [-1, 501])
async def test_search_with_out_of_range_page_size_is_invalid_argument(server, page_size):
    await expect_bad_request(search(server, "x", page_size=page_size), "page_size")


# Concurrent writers ------------------------------------------------------------------------


async def test_concurrent_appends_are_numbered_without_gaps_and_each_stays_contiguous(server):
    await create_session(server.sessions, "s1")
    answers = await asyncio.gather(
        *[append(server.messages, "s1", user(f"q{i}"), assistant(f"a{i}")) for i in range(20)]
    )
    assert sorted(s for a in answers for s in seqs(a.messages)) == list(range(1, 41))
    for a in answers:
        first, second = seqs(a.messages)
        assert second == first + 1  # one append is numbered as one block
        assert a.revision > 0
    s = await get_session(server.sessions, "s1")
    assert (s.message_count, s.turn_count, s.last_seq) == (40, 20, 40)
    assert s.revision == max(a.revision for a in answers)
    await counters_ok(server, "s1")
    assert await server.check_consistency() == []


async def test_a_failing_write_does_not_fail_its_concurrent_neighbours(server):
    await create_session(server.sessions, "s1")
    await create_session(server.sessions, "s2")
    await append(server.messages, "s1", user("first", id="taken"))
    good = [append(server.messages, sid, user(f"ok {i}")) for i in range(8) for sid in ("s1", "s2")]
    bad = [
        append(server.messages, "s1", user("stale"), expected_last_seq=999),
        append(server.messages, "missing", user("nowhere")),
        append(server.messages, "s1", user("different", id="taken")),
        append(server.messages, "s2", mp.Message(content="no role")),
    ]
    results = await asyncio.gather(*good, *bad, return_exceptions=True)
    good_results, bad_results = results[: len(good)], results[len(good) :]
    assert all(isinstance(r, ms.AppendMessagesResponse) for r in good_results), good_results
    codes = [r.code() if isinstance(r, grpc.RpcError) else r for r in bad_results]
    assert codes == [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    assert (await get_session(server.sessions, "s1")).message_count == 9
    assert (await get_session(server.sessions, "s2")).message_count == 8
    await counters_ok(server, "s1")
    await counters_ok(server, "s2")


async def test_concurrent_retries_of_one_message_id_store_it_once(server):
    await create_session(server.sessions, "s1")
    answers = await asyncio.gather(
        *[append(server.messages, "s1", user("same", id="m1")) for _ in range(10)]
    )
    assert {a.messages[0].seq for a in answers} == {1}
    assert sum(1 for a in answers if a.revision) == 1
    assert (await get_session(server.sessions, "s1")).message_count == 1
    await counters_ok(server, "s1")


# Paging tokens carry the request -------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [{"session_id": "s2"}, {"descending": True}, {"after_seq": 1}],
    ids=["session_id", "descending", "after_seq"],
)
async def test_a_list_messages_token_with_other_request_fields_is_invalid_argument(
    server, changed
):
    for sid in ("s1", "s2"):
        await create_session(server.sessions, sid)
        await numbered(server, sid, 6)
    page = await list_messages(server, "s1", page_size=2)
    request = {"session_id": "s1", "page_size": 2, "page_token": page.next_page_token}
    request.update(changed)
    await expect_bad_request(
        server.messages.ListMessages(ms.ListMessagesRequest(**request)), "page_token"
    )


async def test_a_search_token_with_another_query_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", *[user(f"needle hay {i}") for i in range(5)])
    page = await search(server, "needle", page_size=2)
    await expect_bad_request(
        search(server, "hay", page_size=2, page_token=page.next_page_token), "page_token"
    )


async def test_list_messages_last_turns_of_exactly_1000_messages_is_not_truncated(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("start"))
    for start in range(0, 999, 100):
        await append(server.messages, "s1", *[assistant("x")] * min(100, 999 - start))
    page = await list_messages(server, "s1", last_turns=1)
    assert len(page.messages) == 1000
    assert not page.truncated


async def test_search_default_page_size_is_50(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", *[user(f"needle {i}") for i in range(60)])
    page = await search(server, "needle")
    assert len(page.messages) == 50
    assert page.next_page_token


# Retries come before guards, reads in one snapshot (issue 12 items 4 and 5) -------------


async def test_a_retried_append_returns_the_stored_messages_though_last_seq_moved_on(server):
    await create_session(server.sessions, "s1")
    first = await append(server.messages, "s1", user("q", id="u1"), assistant("a", id="a1"),
                         expected_last_seq=0)
    await append(server.messages, "s1", user("next"))
    retry = await append(server.messages, "s1", user("q", id="u1"), assistant("a", id="a1"),
                         expected_last_seq=0)
    assert list(retry.messages) == list(first.messages)
    assert retry.revision == 0
    assert [m.content for m in await list_all_messages(server.messages, "s1")] == [
        "q", "a", "next"]


async def test_a_retried_append_returns_the_stored_messages_after_the_session_ended(server):
    await create_session(server.sessions, "s1")
    first = await append(server.messages, "s1", user("q", id="u1"))
    await server.sessions.EndSession(
        ss.EndSessionRequest(session_id="s1", status=sp.SESSION_STATUS_COMPLETED))
    retry = await append(server.messages, "s1", user("q", id="u1"))
    assert list(retry.messages) == list(first.messages)
    assert retry.revision == 0


async def test_an_append_with_a_new_message_still_checks_the_guards(server):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("q", id="u1"), expected_last_seq=0)
    await expect_failure(
        append(server.messages, "s1", user("q", id="u1"), user("new", id="u2"),
               expected_last_seq=0),
        ABORTED, "LAST_SEQ_MISMATCH")
    await server.sessions.EndSession(
        ss.EndSessionRequest(session_id="s1", status=sp.SESSION_STATUS_COMPLETED))
    await expect_failure(
        append(server.messages, "s1", user("q", id="u1"), user("new", id="u2")),
        FAILED_PRECONDITION, "SESSION_ENDED")
    assert [m.id for m in await list_all_messages(server.messages, "s1")] == ["u1"]


async def test_listed_and_searched_messages_are_never_newer_than_the_reported_revision(
        server):
    await create_session(server.sessions, "s1")
    revision_of_seq: dict[int, int] = {}
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            answer = await append(server.messages, "s1", user(f"walrus {i}"))
            revision_of_seq[answer.messages[0].seq] = answer.revision
            i += 1

    # (seq, revision reported with it), checked once every append is acknowledged.
    read: list[tuple[int, int]] = []

    async def reader() -> None:
        for _ in range(60):
            page = await server.messages.ListMessages(
                ms.ListMessagesRequest(session_id="s1", last_n=1000))
            found = await server.messages.SearchMessages(
                ms.SearchMessagesRequest(query="walrus", page_size=500))
            read.extend((m.seq, page.revision) for m in page.messages)
            read.extend((m.seq, found.revision) for m in found.messages)

    writers = [asyncio.ensure_future(writer()) for _ in range(3)]
    try:
        await reader()
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert read
    newer = [(seq, revision, revision_of_seq[seq]) for seq, revision in read
             if revision_of_seq[seq] > revision]
    assert not newer, f"(seq, reported revision, its write's revision): {newer[:5]}"
