"""ReplaceMessages and DeleteMessages: history compaction that keeps everything exact.

Through gRPC on both backends: the counters equal recounts (and the store's own
consistency check, rollups included, finds nothing), the search index forgets
what was removed and finds what was added, retries are answered before the
guards, each guard answers its documented status, and the watch delivers one
event per rewrite under every guarantee of the watch validator.
"""

from __future__ import annotations

from typing import Any

import grpc
from harness import (
    append,
    assert_counters_match_recount,
    assistant,
    create_session,
    expect_bad_request,
    expect_failure,
    list_all_messages,
    tool,
    user,
)
from sessiond.v1 import event_pb2, message_pb2, session_service_pb2
from sessiond.v1 import message_service_pb2 as ms
from watch_validator import ChangeLogWriter, WatchRecorder, WatchValidator

ABORTED = grpc.StatusCode.ABORTED


async def seeded(server: Any, session_id: str) -> list[message_pb2.Message]:
    """A session of six messages: two turns, the first with a tool call."""
    await create_session(server.sessions, session_id)
    answer = await append(server.messages, session_id,
                          user("weather in Paris?"), assistant("", tool_calls=1),
                          tool("rain"), assistant("It rains in Paris."),
                          user("and tomorrow?"), assistant("Sunny tomorrow."))
    return list(answer.messages)


def replace(server: Any, session_id: str, **fields: Any) -> Any:
    return server.messages.ReplaceMessages(ms.ReplaceMessagesRequest(session_id=session_id,
                                                                     **fields))


async def contents(server: Any, session_id: str) -> list[tuple[int, str]]:
    return [(m.seq, m.content) for m in await list_all_messages(server.messages, session_id)]


async def test_replace_swaps_the_tail_for_new_messages_numbered_after_last_seq(
    server: Any,
) -> None:
    stored = await seeded(server, "c")
    summary = assistant("Summary: rain today, sun tomorrow.", id="sum-1")
    answer = await replace(server, "c", after_seq=1, expected_last_seq=6, messages=[summary])
    assert answer.removed_count == 5
    assert [(m.seq, m.id) for m in answer.messages] == [(7, "sum-1")]
    assert await contents(server, "c") == [(1, stored[0].content),
                                           (7, "Summary: rain today, sun tomorrow.")]
    session = answer.session
    assert (session.message_count, session.turn_count, session.tool_call_count,
            session.last_seq) == (2, 1, 0, 7)
    await assert_counters_match_recount(server.sessions, server.messages, "c")
    assert await server.check_consistency() == []


async def test_replace_keeps_the_search_index_exact(server: Any) -> None:
    await seeded(server, "c")
    await replace(server, "c", after_seq=2, expected_last_seq=6,
                  messages=[assistant("Forecast condensed: drizzle.")])
    gone = await server.messages.SearchMessages(ms.SearchMessagesRequest(query="Sunny"))
    assert list(gone.messages) == []
    found = await server.messages.SearchMessages(ms.SearchMessagesRequest(query="drizzle"))
    assert [m.seq for m in found.messages] == [7]


async def test_a_retried_replace_returns_the_stored_result_before_the_guards(
    server: Any,
) -> None:
    await seeded(server, "c")
    request = ms.ReplaceMessagesRequest(
        session_id="c", after_seq=4, expected_last_seq=6,
        messages=[assistant("short", id="a"), user("next", id="b")])
    first = await server.messages.ReplaceMessages(request)
    again = await server.messages.ReplaceMessages(request)  # last_seq moved: 8, not 6
    assert again.revision == 0
    assert [(m.seq, m.id) for m in again.messages] == [(7, "a"), (8, "b")]
    assert again.session.revision == first.session.revision
    await assert_counters_match_recount(server.sessions, server.messages, "c")


async def test_a_replace_retried_after_later_appends_is_still_a_retry(server: Any) -> None:
    """A retry whose replacement was applied and then followed by appends finds the
    tail starting with its messages and a guard the first attempt moved: it answers
    them as stored and removes nothing. The same messages with the current guard ask
    to drop what follows, and do."""
    await seeded(server, "c")
    request = ms.ReplaceMessagesRequest(
        session_id="c", after_seq=4, expected_last_seq=6,
        messages=[assistant("short", id="a"), user("next", id="b")])
    await server.messages.ReplaceMessages(request)
    await append(server.messages, "c", assistant("later", id="c9"))
    again = await server.messages.ReplaceMessages(request)
    assert again.revision == 0 and again.removed_count == 0
    assert [(m.seq, m.id) for m in again.messages] == [(7, "a"), (8, "b")]
    assert [seq for seq, _ in await contents(server, "c")] == [1, 2, 3, 4, 7, 8, 9]
    request.expected_last_seq = 9  # current: a real request to drop "later"
    dropped = await server.messages.ReplaceMessages(request)
    assert dropped.revision > 0 and dropped.removed_count == 3
    assert [(m.seq, m.id) for m in dropped.messages] == [(10, "a"), (11, "b")]
    await assert_counters_match_recount(server.sessions, server.messages, "c")
    assert await server.check_consistency() == []


async def test_a_replace_of_nothing_with_nothing_changes_nothing(server: Any) -> None:
    """No messages after the last one: nothing to remove and nothing to add, so no
    write (revision 0), whatever the guard says, as a retry of it would be."""
    await seeded(server, "c")
    for guard in (6, 3):
        answer = await replace(server, "c", after_seq=6, expected_last_seq=guard, messages=[])
        assert (answer.revision, answer.removed_count, list(answer.messages)) == (0, 0, [])
        assert answer.session.last_seq == 6


async def test_replace_refuses_stale_guards_and_bad_input(server: Any) -> None:
    await seeded(server, "c")
    await expect_failure(replace(server, "c", after_seq=2, expected_last_seq=5,
                                 messages=[assistant("x")]), ABORTED, "LAST_SEQ_MISMATCH")
    before = (await server.sessions.GetSession(
        session_service_pb2.GetSessionRequest(session_id="c"))).session
    await server.messages.PopMessage(ms.PopMessageRequest(session_id="c"))
    # last_seq is still 6 after the pop; the etag says the history changed.
    await expect_failure(replace(server, "c", after_seq=2, expected_last_seq=6,
                                 etag=before.etag, messages=[assistant("x")]),
                         ABORTED, "ETAG_MISMATCH")
    await expect_bad_request(replace(server, "c", after_seq=9, expected_last_seq=6),
                             "after_seq")
    await expect_bad_request(replace(server, "c", after_seq=2), "expected_last_seq")
    await append(server.messages, "c", user("kept", id="kept-1"))
    await expect_failure(replace(server, "c", after_seq=7, expected_last_seq=7,
                                 messages=[assistant("dup", id="kept-1")]),
                         grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_CONFLICT")
    await assert_counters_match_recount(server.sessions, server.messages, "c")


async def test_replace_with_no_messages_truncates_the_tail(server: Any) -> None:
    await seeded(server, "c")
    answer = await replace(server, "c", after_seq=4, expected_last_seq=6)
    assert (answer.removed_count, list(answer.messages)) == (2, [])
    assert [seq for seq, _ in await contents(server, "c")] == [1, 2, 3, 4]
    assert answer.session.last_seq == 6
    await assert_counters_match_recount(server.sessions, server.messages, "c")


async def test_delete_drops_a_prefix_and_a_repeat_changes_nothing(server: Any) -> None:
    await seeded(server, "c")
    request = ms.DeleteMessagesRequest(session_id="c", up_to_seq=4, expected_last_seq=6)
    answer = await server.messages.DeleteMessages(request)
    assert answer.removed_count == 4
    assert (answer.session.message_count, answer.session.turn_count,
            answer.session.tool_call_count) == (2, 1, 0)
    assert [seq for seq, _ in await contents(server, "c")] == [5, 6]
    again = await server.messages.DeleteMessages(request)
    assert (again.removed_count, again.revision) == (0, 0)
    await expect_bad_request(server.messages.DeleteMessages(
        ms.DeleteMessagesRequest(session_id="c", up_to_seq=7)), "up_to_seq")
    await expect_bad_request(server.messages.DeleteMessages(
        ms.DeleteMessagesRequest(session_id="c")), "up_to_seq")
    await expect_failure(server.messages.DeleteMessages(
        ms.DeleteMessagesRequest(session_id="c", up_to_seq=5, expected_last_seq=4)),
        ABORTED, "LAST_SEQ_MISMATCH")
    await assert_counters_match_recount(server.sessions, server.messages, "c")
    assert await server.check_consistency() == []


async def test_the_watch_delivers_one_event_per_rewrite_under_every_guarantee(
    server: Any,
) -> None:
    writer = ChangeLogWriter.for_server(server)
    await writer.create("w")
    async with WatchRecorder(server.sessions, name="rewrites") as recorder:
        await recorder.wait_created()
        await writer.append("w", "one", "two", "three")
        replaced = await writer.replace("w", 1, "summary", expected_last_seq=3)
        await writer.append("w", "four")
        await writer.delete_up_to("w", 1)
        await recorder.wait_covered(writer.last_revision)
    WatchValidator(writer.log).validate(recorder.stream)
    by_type = {e.type: e for e in recorder.stream.events}
    event = by_type[event_pb2.EVENT_TYPE_MESSAGES_REPLACED]
    assert (event.after_seq, event.removed_count) == (1, 2)
    assert [m.content for m in event.messages] == ["summary"]
    assert event.session.last_seq == replaced.session.last_seq
    deleted = by_type[event_pb2.EVENT_TYPE_MESSAGES_DELETED]
    assert (deleted.up_to_seq, deleted.removed_count) == (1, 1)
