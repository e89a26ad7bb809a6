"""Edges where the behaviour could go two ways: each rule is written in the proto and held here.

- ``last_n = 0`` is "not this mode": the request pages as usual.
- A query with nothing to search for (blank, or punctuation only) is INVALID_ARGUMENT in
  ListSessions and SearchMessages alike; an empty one is "no text condition" where the query
  is optional.
- ``ForkSession.up_to_seq = 0`` copies every message; an empty branch is not a fork.
- A chosen id (session, message, request) must not be blank nor start or end with white
  space; an id that names something stored is matched exactly.
- Ending a running session sets it IDLE and clears its turn; an ERROR state is kept.
- ClearMessages keeps the session's usage (spent tokens and money stay counted).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from harness import append, assistant, create_session, expect_bad_request, get_session, user
from sessiond.v1 import (
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)

ms = message_service_pb2
ss = session_service_pb2
st = stats_service_pb2
S = session_pb2


async def test_last_n_zero_pages_as_usual(server: Any) -> None:
    sid = (await create_session(server.sessions, "paged")).id
    await append(server.messages, sid, *[user(f"m{i}") for i in range(3)])
    answer = await server.messages.ListMessages(ms.ListMessagesRequest(session_id=sid, last_n=0))
    assert [m.content for m in answer.messages] == ["m0", "m1", "m2"]
    one = await server.messages.ListMessages(ms.ListMessagesRequest(session_id=sid, last_n=1))
    assert [m.content for m in one.messages] == ["m2"]


@pytest.mark.parametrize("blank", [" ", "   ", "\t\n", "!!!", " - ? "])
async def test_a_blank_query_is_invalid_in_both_searches(server: Any, blank: str) -> None:
    await expect_bad_request(server.sessions.ListSessions(ss.ListSessionsRequest(
        filter=S.SessionFilter(text_query=blank))), "filter.text_query")
    await expect_bad_request(server.messages.SearchMessages(
        ms.SearchMessagesRequest(query=blank)), "query")


async def test_an_empty_text_query_is_no_condition_but_an_empty_search_is_invalid(
        server: Any) -> None:
    await create_session(server.sessions, "quiet")
    listed = await server.sessions.ListSessions(ss.ListSessionsRequest(
        filter=S.SessionFilter(text_query="")))
    assert [s.id for s in listed.sessions] == ["quiet"]
    await expect_bad_request(server.messages.SearchMessages(ms.SearchMessagesRequest(query="")),
                             "query")


async def test_fork_up_to_seq_zero_copies_every_message(server: Any) -> None:
    sid = (await create_session(server.sessions, "source")).id
    await append(server.messages, sid, user("a"), assistant("b"))
    fork = await server.sessions.ForkSession(ss.ForkSessionRequest(
        source_session_id=sid, up_to_seq=0, new_session_id="branch"))
    assert fork.session.message_count == 2
    assert fork.session.parent_id == sid


@pytest.mark.parametrize("bad_id", [" ", "   ", " x", "x ", " x "])
async def test_a_chosen_id_must_not_be_blank_or_padded(server: Any, bad_id: str) -> None:
    await expect_bad_request(server.sessions.CreateSession(ss.CreateSessionRequest(
        session=S.Session(id=bad_id))), "session.id")
    await expect_bad_request(server.sessions.TouchSession(ss.TouchSessionRequest(
        session=S.Session(id=bad_id))), "session.id")
    sid = (await create_session(server.sessions)).id
    await expect_bad_request(server.sessions.ForkSession(ss.ForkSessionRequest(
        source_session_id=sid, new_session_id=bad_id)), "new_session_id")
    await expect_bad_request(append(server.messages, sid, user("hi", id=bad_id)),
                             "messages[0].id")
    await expect_bad_request(server.stats.RecordUsage(st.RecordUsageRequest(
        session_id=sid, model="m", request_id=bad_id, usage=S.Usage(prompt_tokens=1))),
        "request_id")


async def test_an_id_that_names_something_is_matched_exactly(server: Any) -> None:
    await create_session(server.sessions, "x")
    with pytest.raises(grpc.RpcError) as err:
        await get_session(server.sessions, " x ")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        await get_session(server.sessions, "X")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ending_a_session_sets_it_idle_and_clears_its_turn(server: Any) -> None:
    sid = (await create_session(server.sessions, "busy")).id
    await server.sessions.SetRuntimeState(ss.SetRuntimeStateRequest(
        session_id=sid, state=S.RUNTIME_STATE_RUNNING, turn_id="turn-1"))
    ended = await server.sessions.EndSession(ss.EndSessionRequest(
        session_id=sid, status=S.SESSION_STATUS_COMPLETED))
    assert ended.session.runtime_state == S.RUNTIME_STATE_IDLE
    assert ended.session.current_turn_id == ""
    stored = await get_session(server.sessions, sid)
    assert (stored.runtime_state, stored.current_turn_id) == (S.RUNTIME_STATE_IDLE, "")


async def test_ending_a_session_in_error_keeps_the_error_and_its_turn(server: Any) -> None:
    sid = (await create_session(server.sessions, "broken")).id
    await server.sessions.SetRuntimeState(ss.SetRuntimeStateRequest(
        session_id=sid, state=S.RUNTIME_STATE_ERROR, turn_id="turn-9"))
    ended = await server.sessions.EndSession(ss.EndSessionRequest(
        session_id=sid, status=S.SESSION_STATUS_FAILED))
    assert (ended.session.runtime_state, ended.session.current_turn_id) == (
        S.RUNTIME_STATE_ERROR, "turn-9")


async def test_clearing_messages_keeps_the_sessions_usage(server: Any) -> None:
    sid = (await create_session(server.sessions, "spent")).id
    await append(server.messages, sid, user("a"), assistant("b"))
    await server.stats.RecordUsage(st.RecordUsageRequest(
        session_id=sid, model="gpt", usage=S.Usage(prompt_tokens=10, completion_tokens=5,
                                                    cost_micros=700)))
    before = await get_session(server.sessions, sid)
    cleared = await server.messages.ClearMessages(ms.ClearMessagesRequest(session_id=sid))
    assert cleared.session.usage == before.usage
    assert cleared.session.usage.cost_micros == 700
    assert cleared.session.message_count == 0
    assert cleared.session.last_seq == before.last_seq
    by_model = await server.stats.CostByModel(st.CostByModelRequest())
    assert [(m.model, m.usage.cost_micros) for m in by_model.models] == [("gpt", 700)]
