"""Message pages are bounded in bytes, and a stored message never passes its size limit.

A page takes messages while the bytes of those before stay under ``max_page_bytes`` (so it
holds at most that plus one message, and always one), says so with ``size_limited``, and
paging continues after it; the last_n and last_turns windows keep their newest messages and
set ``truncated``. Responses therefore fit gRPC's default 4 MiB client limit, which the raw
test channel here keeps. A cut last_turns window never starts with a tool result whose call
was cut off. UpdateLastMessage checks the merged message against the limit.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from harness import append, assistant, create_session, expect_bad_request, tool, user
from sessiond.v1 import message_pb2, message_service_pb2

ms = message_service_pb2
M = message_pb2
MB = 1_000_000
DEFAULT_CLIENT_LIMIT = 4 << 20


def big(i: int) -> M.Message:
    return user(f"{i} " + "x" * (MB - 10))


@pytest.fixture
async def heavy(server: Any) -> Any:
    await create_session(server.sessions, "heavy")
    for i in range(6):  # one call per message: an append request is bounded too
        await append(server.messages, "heavy", big(i))
    return server


async def test_a_page_of_large_messages_stops_at_the_byte_bound_and_paging_continues(
        heavy: Any) -> None:
    contents, token, pages = [], "", 0
    while True:
        page = await heavy.messages.ListMessages(ms.ListMessagesRequest(
            session_id="heavy", page_token=token))
        pages += 1
        assert page.ByteSize() < DEFAULT_CLIENT_LIMIT
        assert page.messages, "a page always holds one message"
        contents += [m.content.split()[0] for m in page.messages]
        token = page.next_page_token
        if not token:
            assert not page.size_limited
            break
        assert page.size_limited and len(page.messages) < 100
    assert contents == [str(i) for i in range(6)]
    assert pages >= 2


async def test_descending_pages_are_bounded_too(heavy: Any) -> None:
    page = await heavy.messages.ListMessages(ms.ListMessagesRequest(
        session_id="heavy", descending=True))
    assert page.size_limited and page.next_page_token
    assert [m.seq for m in page.messages] == list(range(6, 6 - len(page.messages), -1))


async def test_last_n_keeps_the_newest_messages_that_fit_and_says_it_left_some_out(
        heavy: Any) -> None:
    window = await heavy.messages.ListMessages(ms.ListMessagesRequest(
        session_id="heavy", last_n=6))
    assert window.ByteSize() < DEFAULT_CLIENT_LIMIT
    assert window.truncated and window.size_limited
    seqs = [m.seq for m in window.messages]
    assert seqs == list(range(7 - len(seqs), 7)) and 1 <= len(seqs) < 6


async def test_last_turns_of_large_messages_is_served(heavy: Any) -> None:
    window = await heavy.messages.ListMessages(ms.ListMessagesRequest(
        session_id="heavy", last_turns=6))
    assert window.truncated and window.size_limited
    assert window.messages[-1].seq == 6


async def test_small_pages_are_not_marked(server: Any) -> None:
    await create_session(server.sessions, "small")
    await append(server.messages, "small", user("a"), assistant("b"))
    page = await server.messages.ListMessages(ms.ListMessagesRequest(session_id="small"))
    assert (len(page.messages), page.size_limited, page.next_page_token) == (2, False, "")
    window = await server.messages.ListMessages(ms.ListMessagesRequest(
        session_id="small", last_n=5))
    assert (len(window.messages), window.truncated, window.size_limited) == (2, False, False)


async def test_a_search_matching_every_large_message_pages_through_them(server: Any) -> None:
    await create_session(server.sessions, "words")
    for i in range(5):
        await append(server.messages, "words", user(f"needle {i} " + "y " * (MB // 2 - 10)))
    seqs, token, pages = [], "", 0
    while True:
        page = await server.messages.SearchMessages(ms.SearchMessagesRequest(
            query="needle", page_token=token))
        pages += 1
        assert page.ByteSize() < DEFAULT_CLIENT_LIMIT
        seqs += [m.seq for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seqs == [5, 4, 3, 2, 1] and pages >= 2


async def test_an_update_that_would_pass_the_size_limit_is_refused_and_changes_nothing(
        server: Any) -> None:
    await create_session(server.sessions, "grow")
    await append(server.messages, "grow", assistant("a" * 900_000))
    await expect_bad_request(server.messages.UpdateLastMessage(ms.UpdateLastMessageRequest(
        session_id="grow", message=M.Message(reasoning="r" * 200_000),
        update_mask=field_mask_pb2.FieldMask(paths=["reasoning"]))), "message.content")
    stored = await server.messages.ListMessages(ms.ListMessagesRequest(session_id="grow"))
    assert (len(stored.messages[0].content), stored.messages[0].reasoning) == (900_000, "")
    # Within the limit the same kind of update is fine.
    await server.messages.UpdateLastMessage(ms.UpdateLastMessageRequest(
        session_id="grow", message=M.Message(reasoning="r" * 90_000),
        update_mask=field_mask_pb2.FieldMask(paths=["reasoning"])))


async def test_a_cut_turn_window_never_starts_with_a_tool_result_without_its_call(
        make_server: Any) -> None:
    server = await make_server(limits={"max_message_page_size": 6})
    await create_session(server.sessions, "tools")
    calls = [M.ToolCall(id=f"c{i}", name="lookup", arguments_json="{}") for i in range(4)]
    await append(server.messages, "tools",
                 user("find four things"),
                 M.Message(role=M.ROLE_ASSISTANT, tool_calls=calls),   # seq 2
                 *[tool(f"r{i}", call_id=f"c{i}") for i in range(4)],  # seq 3-6
                 assistant("found them"))                              # seq 7
    window = await server.messages.ListMessages(ms.ListMessagesRequest(
        session_id="tools", last_turns=1))
    assert window.truncated
    # The newest 6 would start at seq 2 (the call): kept whole. One more message and the
    # window would start at a result whose call was cut.
    assert [m.seq for m in window.messages] == [2, 3, 4, 5, 6, 7]
    # Two more messages: the newest 6 (seq 4-9) would start at results whose call (seq 2)
    # was cut, so the window starts after them.
    await append(server.messages, "tools",
                 M.Message(role=M.ROLE_ASSISTANT, tool_calls=[
                     M.ToolCall(id="c9", name="lookup", arguments_json="{}")]),  # seq 8
                 tool("r9", call_id="c9"))                                       # seq 9
    window = await server.messages.ListMessages(ms.ListMessagesRequest(
        session_id="tools", last_turns=1))
    assert window.truncated
    assert [m.seq for m in window.messages] == [7, 8, 9]


async def test_a_message_at_the_size_limit_is_served_alone_on_its_page(server: Any) -> None:
    await create_session(server.sessions, "one")
    await append(server.messages, "one", user("z" * ((1 << 20) - 64)))
    page = await server.messages.ListMessages(ms.ListMessagesRequest(session_id="one"))
    assert len(page.messages) == 1 and page.ByteSize() < DEFAULT_CLIENT_LIMIT


async def test_a_page_of_large_sessions_stops_at_the_byte_bound_and_paging_continues(
        server: Any) -> None:
    from sessiond.v1 import session_pb2, session_service_pb2

    goal = "g" * 60_000  # within max_text_field_bytes; 80 sessions: about 4.8 MB in all
    for i in range(80):
        await create_session(server.sessions, f"wide-{i:02d}", goal=goal)
    seen, token, pages = [], "", 0
    while True:
        page = await server.sessions.ListSessions(session_service_pb2.ListSessionsRequest(
            page_size=500, page_token=token, ascending=True,
            order_by=session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT))
        pages += 1
        assert page.ByteSize() < DEFAULT_CLIENT_LIMIT
        assert page.sessions and page.total_size == 80
        seen += [s.id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"wide-{i:02d}" for i in range(80)] and pages >= 2
    assert isinstance(page.sessions[0], session_pb2.Session)
