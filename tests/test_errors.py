"""Error contract, black box: every failure is a google.rpc.Status in the trailers with an
ErrorInfo (domain "sessiond.v1", documented reason), bad input names each offending field as
a proto path, and nothing leaks SQL or stack traces.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from harness import (
    ERROR_DOMAIN,
    append,
    create_session,
    expect_bad_request,
    expect_failure,
    get_session,
    rpc_failure,
    user,
)
from sessiond.v1 import message_pb2 as mp
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as st

LEAK_MARKERS = ("sqlite", "select ", "insert ", "traceback", "file \"", "exception", "aiosqlite")


def calls_on_a_session(sid: str):
    """One call of every RPC that names an existing session."""
    return {
        "GetSession": lambda s: s.sessions.GetSession(ss.GetSessionRequest(session_id=sid)),
        "UpdateSession": lambda s: s.sessions.UpdateSession(
            ss.UpdateSessionRequest(
                session=sp.Session(id=sid, agent="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["agent"]),
            )
        ),
        "DeleteSession": lambda s: s.sessions.DeleteSession(
            ss.DeleteSessionRequest(session_id=sid)
        ),
        "EndSession": lambda s: s.sessions.EndSession(
            ss.EndSessionRequest(session_id=sid, status=sp.SESSION_STATUS_COMPLETED)
        ),
        "SetRuntimeState": lambda s: s.sessions.SetRuntimeState(
            ss.SetRuntimeStateRequest(session_id=sid, state=sp.RUNTIME_STATE_IDLE)
        ),
        "ForkSession": lambda s: s.sessions.ForkSession(
            ss.ForkSessionRequest(source_session_id=sid)
        ),
        "AppendMessages": lambda s: append(s.messages, sid, user("x")),
        "ListMessages": lambda s: s.messages.ListMessages(ms.ListMessagesRequest(session_id=sid)),
        "PopMessage": lambda s: s.messages.PopMessage(ms.PopMessageRequest(session_id=sid)),
        "UpdateLastMessage": lambda s: s.messages.UpdateLastMessage(
            ms.UpdateLastMessageRequest(session_id=sid, message=mp.Message(content="x"))
        ),
        "ClearMessages": lambda s: s.messages.ClearMessages(
            ms.ClearMessagesRequest(session_id=sid)
        ),
        "ReplaceMessages": lambda s: s.messages.ReplaceMessages(
            ms.ReplaceMessagesRequest(session_id=sid, expected_last_seq=0)
        ),
        "DeleteMessages": lambda s: s.messages.DeleteMessages(
            ms.DeleteMessagesRequest(session_id=sid, up_to_seq=1)
        ),
        "RecordUsage": lambda s: s.stats.RecordUsage(
            st.RecordUsageRequest(session_id=sid, model="m", usage=sp.Usage(prompt_tokens=1))
        ),
    }


REQUIRED_ID_FIELD = {
    "GetSession": "session_id",
    "UpdateSession": "session.id",
    "DeleteSession": "session_id",
    "EndSession": "session_id",
    "SetRuntimeState": "session_id",
    "ForkSession": "source_session_id",
    "AppendMessages": "session_id",
    "ListMessages": "session_id",
    "PopMessage": "session_id",
    "UpdateLastMessage": "session_id",
    "ClearMessages": "session_id",
    "ReplaceMessages": "session_id",
    "DeleteMessages": "session_id",
    "RecordUsage": "session_id",
}


@pytest.mark.parametrize("rpc", sorted(REQUIRED_ID_FIELD))
async def test_a_missing_session_answers_not_found_with_reason_session_not_found(server, rpc):
    await create_session(server.sessions, "exists")
    failure = await expect_failure(
        calls_on_a_session("missing")[rpc](server),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    assert failure.message
    assert not any(marker in failure.message.lower() for marker in LEAK_MARKERS)


@pytest.mark.parametrize("rpc", sorted(REQUIRED_ID_FIELD))
async def test_an_empty_session_id_is_invalid_argument_naming_the_field(server, rpc):
    await expect_bad_request(calls_on_a_session("")[rpc](server), REQUIRED_ID_FIELD[rpc])


async def test_the_status_in_the_trailers_agrees_with_the_call(server):
    failure = await rpc_failure(server.sessions.GetSession(ss.GetSessionRequest(session_id="x")))
    # rpc_status.from_call (inside rpc_failure) raises when code or message disagree.
    assert failure.has_rich_status
    assert failure.domain == ERROR_DOMAIN
    assert failure.reason == "SESSION_NOT_FOUND"


async def test_each_documented_situation_answers_its_code_and_reason(server):
    await create_session(server.sessions, "s1", channel="cli")
    await append(server.messages, "s1", user("a", id="u1"))
    created = await get_session(server.sessions, "s1")
    await create_session(server.sessions, "empty")
    await create_session(server.sessions, "ended")
    await server.sessions.EndSession(
        ss.EndSessionRequest(session_id="ended", status=sp.SESSION_STATUS_COMPLETED)
    )
    await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", agent="a2"),
            update_mask=field_mask_pb2.FieldMask(paths=["agent"]),
        )
    )
    cases = [
        (
            lambda: server.sessions.GetSession(ss.GetSessionRequest(session_id="missing")),
            grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND",
        ),
        (
            lambda: server.sessions.CreateSession(
                ss.CreateSessionRequest(session=sp.Session(id="s1", channel="slack"))
            ),
            grpc.StatusCode.ALREADY_EXISTS, "SESSION_EXISTS",
        ),
        (
            lambda: append(server.messages, "s1", user("different", id="u1")),
            grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_CONFLICT",
        ),
        (
            lambda: server.sessions.DeleteSession(
                ss.DeleteSessionRequest(session_id="s1", etag=created.etag)
            ),
            grpc.StatusCode.ABORTED, "ETAG_MISMATCH",
        ),
        (
            lambda: append(server.messages, "s1", user("b"), expected_last_seq=5),
            grpc.StatusCode.ABORTED, "LAST_SEQ_MISMATCH",
        ),
        (
            lambda: append(server.messages, "ended", user("late")),
            grpc.StatusCode.FAILED_PRECONDITION, "SESSION_ENDED",
        ),
        (
            lambda: server.messages.PopMessage(ms.PopMessageRequest(session_id="empty")),
            grpc.StatusCode.FAILED_PRECONDITION, "SESSION_EMPTY",
        ),
        (
            lambda: server.sessions.ListSessions(ss.ListSessionsRequest(page_size=-1)),
            grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST",
        ),
    ]
    for call, code, reason in cases:
        failure = await expect_failure(call(), code, reason)
        assert not any(marker in failure.message.lower() for marker in LEAK_MARKERS), (
            failure.describe()
        )


async def test_every_bad_field_of_a_request_is_named(server):
    failure = await expect_failure(
        server.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="bad\x00id", channel="Not A Channel"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert {"session.id", "session.channel"} <= set(failure.fields), failure.describe()
    assert all(description for _, description in failure.field_violations)


async def test_bad_messages_are_named_by_their_index(server):
    await create_session(server.sessions, "s1")
    failure = await expect_failure(
        append(server.messages, "s1", user("ok"), mp.Message(content="x"), user("ok"),
               mp.Message(content="y")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert {"messages[1].role", "messages[3].role"} <= set(failure.fields), failure.describe()


@pytest.mark.parametrize(
    ("filter_fields", "field"),
    [
        ({"statuses": [sp.SESSION_STATUS_ACTIVE, sp.SESSION_STATUS_UNSPECIFIED]},
         "filter.statuses[1]"),
        ({"session_ids": [f"s{i}" for i in range(101)]}, "filter.session_ids"),
        ({"text_query": "w" * 257}, "filter.text_query"),
        ({"running_longer_than_seconds": -1}, "filter.running_longer_than_seconds"),
    ],
    ids=["unspecified-status", "too-many-ids", "long-text-query", "negative-running"],
)
@pytest.mark.parametrize("rpc", ["ListSessions", "GetStats", "CostByModel"])
async def test_a_bad_filter_is_invalid_argument_naming_the_filter_path(
    server, rpc, filter_fields, field
):
    bad = sp.SessionFilter(**filter_fields)
    call = {
        "ListSessions": lambda: server.sessions.ListSessions(ss.ListSessionsRequest(filter=bad)),
        "GetStats": lambda: server.stats.GetStats(st.GetStatsRequest(filter=bad)),
        "CostByModel": lambda: server.stats.CostByModel(st.CostByModelRequest(filter=bad)),
    }[rpc]
    await expect_bad_request(call(), field)


@pytest.mark.parametrize(
    "sid", ["'; DROP TABLE sessions; --", 'x" OR "1"="1', "%", "_", "ünïcödé 🚀", "a/b\\c"]
)
async def test_ids_that_look_like_sql_or_wildcards_are_plain_ids(server, sid):
    await create_session(server.sessions, "other")
    await create_session(server.sessions, sid)
    assert (await get_session(server.sessions, sid)).id == sid
    listed = await server.sessions.ListSessions(
        ss.ListSessionsRequest(filter=sp.SessionFilter(session_ids=[sid]))
    )
    assert [s.id for s in listed.sessions] == [sid]
    await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id=sid))
    assert (await get_session(server.sessions, "other")).id == "other"
    assert await server.check_consistency() == []
