"""SessionService, black box: lifecycle, idempotency, optimistic concurrency, runtime state,
forks, reconciliation, retention, read-time ABANDONED, filters and response revisions.

WatchSessions is covered by the watch tests.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from harness import (
    OWN_SUBCHANNELS,
    append,
    assert_counters_match_recount,
    assistant,
    create_session,
    expect_bad_request,
    expect_failure,
    get_session,
    list_all_messages,
    micros,
    timestamp,
    tool,
    user,
)
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as st
from sessiond_server.api import sessions as sessions_api
from sessiond_server.store import logic as store_logic

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ABORTED = grpc.StatusCode.ABORTED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def end(server, session_id: str, status=sp.SESSION_STATUS_COMPLETED, **fields):
    return await server.sessions.EndSession(
        ss.EndSessionRequest(session_id=session_id, status=status, **fields)
    )


async def reconcile(server, instance: str, keep=(), reason: str = ""):
    return await server.sessions.ReconcileSessions(
        ss.ReconcileSessionsRequest(
            runtime_instance=instance, keep_session_ids=list(keep), reason=reason
        )
    )


async def list_ids(server, **filter_fields) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await server.sessions.ListSessions(
            ss.ListSessionsRequest(
                filter=sp.SessionFilter(**filter_fields), page_size=500, page_token=token
            )
        )
        ids.extend(s.id for s in page.sessions)
        token = page.next_page_token
        if not token:
            return sorted(ids)


# CreateSession ---------------------------------------------------------------------------


async def test_create_session_stores_it_with_server_defaults(server):
    answer = await server.sessions.CreateSession(
        ss.CreateSessionRequest(
            session=sp.Session(id="s1", channel="discord.clamps", agent="helper", model="m1")
        )
    )
    s = answer.session
    assert answer.created
    assert answer.revision > 0
    assert s.id == "s1"
    assert s.tenant == "default"
    assert s.kind == sp.SESSION_KIND_INTERACTIVE
    assert s.status == sp.SESSION_STATUS_ACTIVE
    assert s.runtime_state == sp.RUNTIME_STATE_IDLE
    assert (s.channel, s.agent, s.model) == ("discord.clamps", "helper", "m1")
    assert micros(s.started_at) == server.clock.now_micros()
    assert micros(s.last_activity_at) == server.clock.now_micros()
    assert not s.HasField("ended_at")
    assert (s.message_count, s.turn_count, s.tool_call_count, s.last_seq) == (0, 0, 0, 0)
    assert s.revision == answer.revision
    assert s.etag
    assert await get_session(server.sessions, "s1") == s


async def test_create_session_without_id_assigns_a_uuid(server):
    s = await create_session(server.sessions, "", channel="cli")
    assert uuid.UUID(s.id)


async def test_create_session_keeps_a_given_started_at_for_imports(server):
    started = server.clock.now_micros() - 3_600_000_000
    s = await create_session(server.sessions, "imported", started_at=timestamp(started))
    assert micros(s.started_at) == started


async def test_create_session_ignores_output_only_fields(server):
    answer = await server.sessions.CreateSession(
        ss.CreateSessionRequest(
            session=sp.Session(
                id="s1",
                tenant="someone-else",
                status=sp.SESSION_STATUS_COMPLETED,
                message_count=7,
                turn_count=3,
                last_seq=9,
                revision=12345,
                etag="forged",
                usage=sp.Usage(cost_micros=99),
            )
        )
    )
    s = answer.session
    assert s.tenant == "default"
    assert s.status == sp.SESSION_STATUS_ACTIVE
    assert (s.message_count, s.turn_count, s.last_seq) == (0, 0, 0)
    assert s.usage.cost_micros == 0
    assert s.revision == answer.revision
    assert s.etag != "forged"


async def test_create_identical_session_again_returns_it_with_created_false_and_no_write(
    server,
):
    request = ss.CreateSessionRequest(
        session=sp.Session(id="s1", channel="cli", labels={"team": "a"})
    )
    first = await server.sessions.CreateSession(request)
    server.clock.advance(5)  # a retry arrives later; started_at was left to the server
    again = await server.sessions.CreateSession(request)
    assert not again.created
    assert again.revision == 0
    assert again.session == first.session
    got = await server.sessions.GetSession(ss.GetSessionRequest(session_id="s1"))
    assert got.revision == first.revision


async def test_create_existing_id_with_different_content_fails_with_session_exists(server):
    await create_session(server.sessions, "s1", channel="cli")
    await expect_failure(
        server.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="s1", channel="slack"))
        ),
        ALREADY_EXISTS,
        "SESSION_EXISTS",
    )
    assert (await get_session(server.sessions, "s1")).channel == "cli"


@pytest.mark.parametrize(
    ("session", "field"),
    [
        (sp.Session(id="a\x01b"), "session.id"),
        (sp.Session(id="x" * 257), "session.id"),
        (sp.Session(id="s1", channel="CLI"), "session.channel"),
        (sp.Session(id="s1", channel="has space"), "session.channel"),
        (sp.Session(id="s1", channel="c" * 129), "session.channel"),
        (sp.Session(id="s1", goal="g" * (64 * 1024 + 1)), "session.goal"),
    ],
    ids=["control-char-id", "long-id", "upper-channel", "space-channel", "long-channel",
         "long-goal"],
)
async def test_create_session_with_bad_field_is_invalid_argument_naming_it(
    server, session, field
):
    await expect_bad_request(
        server.sessions.CreateSession(ss.CreateSessionRequest(session=session)), field
    )
    listed = await server.sessions.ListSessions(ss.ListSessionsRequest())
    assert listed.total_size == 0


async def test_create_session_with_label_key_too_long_names_the_labels(server):
    failure = await expect_failure(
        server.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="s1", labels={"k" * 64: "v"}))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert any(f.startswith("session.labels") for f in failure.fields), failure.describe()


# GetSession ------------------------------------------------------------------------------


async def test_get_missing_session_is_not_found(server):
    await expect_failure(
        server.sessions.GetSession(ss.GetSessionRequest(session_id="nope")),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


async def test_get_session_without_id_is_invalid_argument(server):
    await expect_bad_request(server.sessions.GetSession(ss.GetSessionRequest()), "session_id")


# UpdateSession ---------------------------------------------------------------------------


async def test_update_session_changes_only_the_masked_fields(server):
    before = await create_session(server.sessions, "s1", agent="a1", display_name="old")
    server.clock.advance(3)
    answer = await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", display_name="new", agent="ignored", labels={"k": "v"}),
            update_mask=mask("display_name", "labels"),
        )
    )
    s = answer.session
    assert (s.display_name, s.agent, dict(s.labels)) == ("new", "a1", {"k": "v"})
    assert answer.revision > before.revision
    assert s.revision == answer.revision
    assert s.etag != before.etag
    assert micros(s.updated_at) == server.clock.now_micros()
    assert await get_session(server.sessions, "s1") == s


async def test_update_session_labels_path_replaces_the_whole_map(server):
    await create_session(server.sessions, "s1", labels={"a": "1", "b": "2"})
    answer = await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", labels={"c": "3"}), update_mask=mask("labels")
        )
    )
    assert dict(answer.session.labels) == {"c": "3"}


@pytest.mark.parametrize(
    "path",
    ["kind", "channel", "room_id", "sender_id", "agent", "model", "display_name", "goal",
     "owner_id", "dataset_id", "labels", "runtime_instance", "budget_micros"],
)
async def test_update_session_accepts_every_documented_mask_path(server, path):
    await create_session(server.sessions, "s1")
    values = {
        "kind": sp.SESSION_KIND_AUTONOMOUS, "channel": "slack", "labels": {"x": "y"},
        "budget_micros": 5_000,
    }
    new = sp.Session(id="s1", **{path: values.get(path, "changed")})
    answer = await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(session=new, update_mask=mask(path))
    )
    assert answer.revision > 0
    if path == "labels":
        assert dict(answer.session.labels) == {"x": "y"}
    else:
        assert getattr(answer.session, path) == getattr(new, path)


async def test_update_session_with_empty_mask_is_invalid_argument(server):
    await create_session(server.sessions, "s1", display_name="old")
    await expect_bad_request(
        server.sessions.UpdateSession(
            ss.UpdateSessionRequest(session=sp.Session(id="s1", display_name="new"))
        ),
        "update_mask",
    )
    assert (await get_session(server.sessions, "s1")).display_name == "old"


@pytest.mark.parametrize("bad_path", ["status", "message_count", "no_such_field", "id"])
async def test_update_session_with_a_disallowed_mask_path_names_that_path(server, bad_path):
    await create_session(server.sessions, "s1", display_name="old")
    await expect_bad_request(
        server.sessions.UpdateSession(
            ss.UpdateSessionRequest(
                session=sp.Session(id="s1", display_name="new"),
                update_mask=mask("display_name", bad_path),
            )
        ),
        "update_mask.paths[1]",
    )
    assert (await get_session(server.sessions, "s1")).display_name == "old"


async def test_update_session_with_stale_etag_is_aborted_and_changes_nothing(server):
    created = await create_session(server.sessions, "s1", display_name="v0")
    await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", display_name="v1"), update_mask=mask("display_name")
        )
    )
    await expect_failure(
        server.sessions.UpdateSession(
            ss.UpdateSessionRequest(
                session=sp.Session(id="s1", display_name="v2"),
                update_mask=mask("display_name"),
                etag=created.etag,
            )
        ),
        ABORTED,
        "ETAG_MISMATCH",
    )
    assert (await get_session(server.sessions, "s1")).display_name == "v1"


async def test_update_session_with_current_etag_succeeds(server):
    created = await create_session(server.sessions, "s1", display_name="v0")
    answer = await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", display_name="v1"),
            update_mask=mask("display_name"),
            etag=created.etag,
        )
    )
    assert answer.session.display_name == "v1"


async def test_update_session_that_changes_nothing_returns_revision_zero(server):
    created = await create_session(server.sessions, "s1", display_name="same")
    answer = await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", display_name="same"), update_mask=mask("display_name")
        )
    )
    assert answer.revision == 0
    assert answer.session.revision == created.revision
    assert answer.session.etag == created.etag


async def test_update_missing_session_is_not_found(server):
    await expect_failure(
        server.sessions.UpdateSession(
            ss.UpdateSessionRequest(
                session=sp.Session(id="nope", display_name="x"), update_mask=mask("display_name")
            )
        ),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


# DeleteSession ---------------------------------------------------------------------------


async def test_delete_session_removes_its_messages_and_usage(server):
    await create_session(server.sessions, "s1", model="m1")
    await append(server.messages, "s1", user("find zebra"), assistant("ok"), user("more"))
    await server.stats.RecordUsage(
        st.RecordUsageRequest(
            session_id="s1", model="m1", usage=sp.Usage(prompt_tokens=10, cost_micros=500)
        )
    )
    answer = await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="s1"))
    assert answer.deleted_message_count == 3
    assert answer.revision > 0
    await expect_failure(
        server.sessions.GetSession(ss.GetSessionRequest(session_id="s1")),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    await expect_failure(
        server.messages.ListMessages(ms.ListMessagesRequest(session_id="s1")),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    found = await server.messages.SearchMessages(ms.SearchMessagesRequest(query="zebra"))
    assert list(found.messages) == []
    by_model = await server.stats.CostByModel(st.CostByModelRequest())
    assert list(by_model.models) == []
    stats = await server.stats.GetStats(st.GetStatsRequest())
    assert stats.stats.session_count == 0
    assert stats.stats.usage.cost_micros == 0
    # The same id starts from nothing: no message or usage row survived the deletion.
    recreated = await create_session(server.sessions, "s1", model="m1")
    assert (recreated.message_count, recreated.last_seq, recreated.usage.cost_micros) == (0, 0, 0)
    assert await list_all_messages(server.messages, "s1") == []
    assert await server.check_consistency() == []


async def test_delete_missing_session_is_not_found(server):
    await expect_failure(
        server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="nope")),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


async def test_delete_session_with_stale_etag_is_aborted_and_keeps_it(server):
    created = await create_session(server.sessions, "s1")
    await server.sessions.UpdateSession(
        ss.UpdateSessionRequest(
            session=sp.Session(id="s1", agent="changed"), update_mask=mask("agent")
        )
    )
    await expect_failure(
        server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="s1", etag=created.etag)),
        ABORTED,
        "ETAG_MISMATCH",
    )
    assert (await get_session(server.sessions, "s1")).agent == "changed"


async def test_delete_session_with_current_etag_succeeds(server):
    created = await create_session(server.sessions, "s1")
    await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="s1", etag=created.etag))
    assert await list_ids(server) == []


# TouchSession ----------------------------------------------------------------------------


async def test_touch_missing_session_creates_it_from_the_given_fields(server):
    answer = await server.sessions.TouchSession(
        ss.TouchSessionRequest(session=sp.Session(id="s1", channel="cli", agent="a1"))
    )
    assert answer.created
    assert answer.revision > 0
    assert (answer.session.channel, answer.session.agent) == ("cli", "a1")
    assert answer.session.status == sp.SESSION_STATUS_ACTIVE
    assert await get_session(server.sessions, "s1") == answer.session


async def test_touch_existing_session_bumps_last_activity_and_ignores_the_fields(server):
    created = await create_session(server.sessions, "s1", agent="a1")
    now = server.clock.advance(42)
    answer = await server.sessions.TouchSession(
        ss.TouchSessionRequest(session=sp.Session(id="s1", agent="other"))
    )
    assert not answer.created
    assert answer.session.agent == "a1"
    assert micros(answer.session.last_activity_at) == now
    assert micros(answer.session.started_at) == micros(created.started_at)
    assert answer.revision > created.revision
    assert answer.session.revision == answer.revision


async def test_touch_unknown_session_makes_it_active(server):
    await create_session(server.sessions, "s1", runtime_instance="rt-1")
    await reconcile(server, "rt-1")
    assert (await get_session(server.sessions, "s1")).status == sp.SESSION_STATUS_UNKNOWN
    answer = await server.sessions.TouchSession(ss.TouchSessionRequest(session=sp.Session(id="s1")))
    assert answer.session.status == sp.SESSION_STATUS_ACTIVE


async def test_touch_abandoned_session_makes_it_active_again(make_server):
    server = await make_server(abandoned_after_seconds=60)
    await create_session(server.sessions, "s1")
    server.clock.advance(61)
    assert (await get_session(server.sessions, "s1")).status == sp.SESSION_STATUS_ABANDONED
    answer = await server.sessions.TouchSession(ss.TouchSessionRequest(session=sp.Session(id="s1")))
    assert answer.session.status == sp.SESSION_STATUS_ACTIVE


async def test_touch_ended_session_fails_with_session_ended(server):
    await create_session(server.sessions, "s1")
    await end(server, "s1")
    await expect_failure(
        server.sessions.TouchSession(ss.TouchSessionRequest(session=sp.Session(id="s1"))),
        FAILED_PRECONDITION,
        "SESSION_ENDED",
    )


async def test_touch_without_id_is_invalid_argument(server):
    await expect_bad_request(
        server.sessions.TouchSession(ss.TouchSessionRequest(session=sp.Session(channel="cli"))),
        "session.id",
    )


# EndSession ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [sp.SESSION_STATUS_COMPLETED, sp.SESSION_STATUS_FAILED, sp.SESSION_STATUS_CANCELLED],
)
async def test_end_session_sets_terminal_status_reason_and_ended_at(server, status):
    created = await create_session(server.sessions, "s1")
    now = server.clock.advance(10)
    answer = await end(server, "s1", status, reason="done")
    s = answer.session
    assert s.status == status
    assert s.end_reason == "done"
    assert micros(s.ended_at) == now
    assert answer.revision > created.revision
    assert s.revision == answer.revision


async def test_end_session_keeps_a_given_ended_at(server):
    await create_session(server.sessions, "s1")
    ended = server.clock.now_micros() + 7_000_000
    answer = await end(server, "s1", ended_at=timestamp(ended))
    assert micros(answer.session.ended_at) == ended


async def test_end_session_again_with_same_status_changes_nothing(server):
    await create_session(server.sessions, "s1")
    first = await end(server, "s1", reason="first")
    server.clock.advance(5)
    again = await end(server, "s1", reason="second")
    assert again.revision == 0
    assert again.session == first.session


async def test_end_session_again_with_another_status_fails_with_session_ended(server):
    await create_session(server.sessions, "s1")
    await end(server, "s1", sp.SESSION_STATUS_COMPLETED)
    await expect_failure(
        end(server, "s1", sp.SESSION_STATUS_FAILED), FAILED_PRECONDITION, "SESSION_ENDED"
    )
    assert (await get_session(server.sessions, "s1")).status == sp.SESSION_STATUS_COMPLETED


@pytest.mark.parametrize(
    "status",
    [sp.SESSION_STATUS_UNSPECIFIED, sp.SESSION_STATUS_ACTIVE, sp.SESSION_STATUS_UNKNOWN,
     sp.SESSION_STATUS_ABANDONED],
)
async def test_end_session_with_non_terminal_status_is_invalid_argument(server, status):
    await create_session(server.sessions, "s1")
    await expect_bad_request(end(server, "s1", status), "status")
    assert (await get_session(server.sessions, "s1")).status == sp.SESSION_STATUS_ACTIVE


async def test_end_missing_session_is_not_found(server):
    await expect_failure(end(server, "nope"), NOT_FOUND, "SESSION_NOT_FOUND")


async def test_end_session_settles_an_unknown_session(server):
    await create_session(server.sessions, "s1", runtime_instance="rt-1")
    await reconcile(server, "rt-1")
    answer = await end(server, "s1", sp.SESSION_STATUS_FAILED, reason="crashed")
    assert answer.session.status == sp.SESSION_STATUS_FAILED


# SetRuntimeState -------------------------------------------------------------------------


async def test_set_runtime_state_running_records_the_turn_and_instance(server):
    created = await create_session(server.sessions, "s1")
    now = server.clock.advance(3)
    answer = await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(
            session_id="s1", state=sp.RUNTIME_STATE_RUNNING, turn_id="t1", runtime_instance="rt-9"
        )
    )
    s = answer.session
    assert s.runtime_state == sp.RUNTIME_STATE_RUNNING
    assert s.current_turn_id == "t1"
    assert micros(s.turn_started_at) == now
    assert s.runtime_instance == "rt-9"
    assert micros(s.last_activity_at) == now
    assert answer.revision > created.revision
    assert s.revision == answer.revision


async def test_set_runtime_state_running_keeps_a_given_turn_start(server):
    await create_session(server.sessions, "s1")
    started = server.clock.now_micros() - 2_000_000
    answer = await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(
            session_id="s1", state=sp.RUNTIME_STATE_RUNNING, turn_id="t1",
            turn_started_at=timestamp(started),
        )
    )
    assert micros(answer.session.turn_started_at) == started


async def test_set_runtime_state_idle_clears_the_turn(server):
    await create_session(server.sessions, "s1")
    await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="s1", state=sp.RUNTIME_STATE_RUNNING, turn_id="t1")
    )
    answer = await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="s1", state=sp.RUNTIME_STATE_IDLE)
    )
    assert answer.session.runtime_state == sp.RUNTIME_STATE_IDLE
    assert answer.session.current_turn_id == ""
    assert not answer.session.HasField("turn_started_at")


async def test_set_runtime_state_error_records_the_failed_turn(server):
    await create_session(server.sessions, "s1")
    answer = await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="s1", state=sp.RUNTIME_STATE_ERROR, turn_id="t7")
    )
    assert answer.session.runtime_state == sp.RUNTIME_STATE_ERROR
    assert answer.session.current_turn_id == "t7"


async def test_set_runtime_state_running_makes_an_unknown_session_active(server):
    await create_session(server.sessions, "s1", runtime_instance="rt-1")
    await reconcile(server, "rt-1")
    answer = await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="s1", state=sp.RUNTIME_STATE_RUNNING, turn_id="t")
    )
    assert answer.session.status == sp.SESSION_STATUS_ACTIVE


async def test_set_runtime_state_on_ended_session_fails_with_session_ended(server):
    await create_session(server.sessions, "s1")
    await end(server, "s1", sp.SESSION_STATUS_CANCELLED)
    await expect_failure(
        server.sessions.SetRuntimeState(
            ss.SetRuntimeStateRequest(session_id="s1", state=sp.RUNTIME_STATE_RUNNING)
        ),
        FAILED_PRECONDITION,
        "SESSION_ENDED",
    )


async def test_set_runtime_state_unspecified_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        server.sessions.SetRuntimeState(ss.SetRuntimeStateRequest(session_id="s1")), "state"
    )


async def test_set_runtime_state_on_missing_session_is_not_found(server):
    await expect_failure(
        server.sessions.SetRuntimeState(
            ss.SetRuntimeStateRequest(session_id="nope", state=sp.RUNTIME_STATE_IDLE)
        ),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


# ForkSession -----------------------------------------------------------------------------


async def make_history_starting_at_seq_3(server, session_id: str) -> None:
    """A session whose surviving messages are numbered 3..7 (1 and 2 were cleared)."""
    await create_session(server.sessions, session_id, agent="a1", display_name="source")
    await append(server.messages, session_id, user("old"), assistant("old"))
    await server.messages.ClearMessages(ms.ClearMessagesRequest(session_id=session_id))
    await append(
        server.messages,
        session_id,
        user("q1", id="m3"),
        assistant("", tool_calls=2, id="m4"),
        tool("r0", "call-0", id="m5"),
        tool("r1", "call-1", id="m6"),
        assistant("a1", id="m7"),
    )


async def test_fork_copies_messages_up_to_seq_and_renumbers_them_from_one(server):
    await make_history_starting_at_seq_3(server, "src")
    answer = await server.sessions.ForkSession(
        ss.ForkSessionRequest(source_session_id="src", up_to_seq=5, new_session_id="fork")
    )
    fork = answer.session
    assert answer.created
    assert answer.revision > 0
    assert (fork.id, fork.parent_id, fork.fork_seq) == ("fork", "src", 5)
    assert fork.display_name == "source"
    assert fork.agent == "a1"
    assert fork.status == sp.SESSION_STATUS_ACTIVE
    copied = await list_all_messages(server.messages, "fork")
    assert [m.seq for m in copied] == [1, 2, 3]
    assert [(m.id, m.content) for m in copied] == [("m3", "q1"), ("m4", ""), ("m5", "r0")]
    assert len(copied[1].tool_calls) == 2
    assert (fork.message_count, fork.turn_count, fork.tool_call_count, fork.last_seq) == (
        3, 0, 2, 3,
    )
    await assert_counters_match_recount(server.sessions, server.messages, "fork")
    source = await list_all_messages(server.messages, "src")
    assert [m.seq for m in source] == [3, 4, 5, 6, 7]
    assert await server.check_consistency() == []


async def test_fork_with_up_to_seq_zero_copies_every_message(server):
    await make_history_starting_at_seq_3(server, "src")
    answer = await server.sessions.ForkSession(
        ss.ForkSessionRequest(source_session_id="src", new_session_id="fork", display_name="f")
    )
    assert answer.session.display_name == "f"
    assert answer.session.fork_seq == 7
    copied = await list_all_messages(server.messages, "fork")
    assert [m.seq for m in copied] == [1, 2, 3, 4, 5]
    assert [m.content for m in copied] == ["q1", "", "r0", "r1", "a1"]
    await assert_counters_match_recount(server.sessions, server.messages, "fork")


async def test_fork_without_new_id_assigns_a_uuid(server):
    await create_session(server.sessions, "src")
    answer = await server.sessions.ForkSession(ss.ForkSessionRequest(source_session_id="src"))
    assert uuid.UUID(answer.session.id)
    assert answer.session.parent_id == "src"


async def test_fork_retry_is_idempotent_and_a_different_fork_to_the_same_id_conflicts(server):
    await make_history_starting_at_seq_3(server, "src")
    request = ss.ForkSessionRequest(source_session_id="src", up_to_seq=4, new_session_id="f")
    first = await server.sessions.ForkSession(request)
    again = await server.sessions.ForkSession(request)
    assert not again.created
    assert again.session.id == "f"
    assert again.session.message_count == first.session.message_count
    await expect_failure(
        server.sessions.ForkSession(
            ss.ForkSessionRequest(source_session_id="src", up_to_seq=6, new_session_id="f")
        ),
        ALREADY_EXISTS,
        "SESSION_EXISTS",
    )
    assert (await get_session(server.sessions, "f")).message_count == 2


async def test_a_fork_retried_after_its_source_changed_or_went_answers_the_fork(server):
    """A retry is recognised before any guard on the source: with up_to_seq 0 (every
    message) after the source grew, with up_to_seq after the source shrank below
    it, and after the source was deleted, the retry answers the fork as made."""
    await make_history_starting_at_seq_3(server, "src")
    latest = ss.ForkSessionRequest(source_session_id="src", new_session_id="f-latest")
    pinned = ss.ForkSessionRequest(source_session_id="src", up_to_seq=4, new_session_id="f-4")
    made = [await server.sessions.ForkSession(r) for r in (latest, pinned)]
    await append(server.messages, "src", user("later"))
    for _ in range(5):  # 8, 7, 6, 5, 4: the source now ends below the pinned fork's 4
        await server.messages.PopMessage(ms.PopMessageRequest(session_id="src"))
    for request, first in zip((latest, pinned), made, strict=True):
        again = await server.sessions.ForkSession(request)
        assert (again.created, again.revision) == (False, 0)
        assert again.session == first.session
    await server.sessions.DeleteSession(ss.DeleteSessionRequest(session_id="src"))
    again = await server.sessions.ForkSession(latest)
    assert not again.created and again.session.fork_seq == made[0].session.fork_seq


async def test_fork_onto_an_existing_unrelated_session_id_is_already_exists(server):
    await create_session(server.sessions, "src")
    await create_session(server.sessions, "taken")
    await expect_failure(
        server.sessions.ForkSession(
            ss.ForkSessionRequest(source_session_id="src", new_session_id="taken")
        ),
        ALREADY_EXISTS,
        "SESSION_EXISTS",
    )


async def test_fork_beyond_last_seq_is_invalid_argument(server):
    await make_history_starting_at_seq_3(server, "src")
    await expect_bad_request(
        server.sessions.ForkSession(
            ss.ForkSessionRequest(source_session_id="src", up_to_seq=8, new_session_id="f")
        ),
        "up_to_seq",
    )
    assert await list_ids(server) == ["src"]


async def test_fork_of_missing_session_is_not_found(server):
    await expect_failure(
        server.sessions.ForkSession(ss.ForkSessionRequest(source_session_id="nope")),
        NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


async def test_forks_are_listed_by_parent_id(server):
    await create_session(server.sessions, "src")
    await create_session(server.sessions, "other")
    for new_id in ("f1", "f2"):
        await server.sessions.ForkSession(
            ss.ForkSessionRequest(source_session_id="src", new_session_id=new_id)
        )
    assert await list_ids(server, parent_id="src") == ["f1", "f2"]


# ReconcileSessions -----------------------------------------------------------------------


async def test_reconcile_marks_the_instances_active_sessions_unknown_except_kept(server):
    for sid in ("a", "b", "c", "ended"):
        await create_session(server.sessions, sid, runtime_instance="rt-1")
    await create_session(server.sessions, "elsewhere", runtime_instance="rt-2")
    await end(server, "ended")
    answer = await reconcile(server, "rt-1", keep=["b"])
    assert sorted(answer.marked_session_ids) == ["a", "c"]
    assert answer.revision > 0
    for sid in ("a", "c"):
        s = await get_session(server.sessions, sid)
        assert s.status == sp.SESSION_STATUS_UNKNOWN
        assert s.end_reason == "runtime restarted"
        assert s.revision == answer.revision  # all marked in one revision
    assert (await get_session(server.sessions, "b")).status == sp.SESSION_STATUS_ACTIVE
    assert (await get_session(server.sessions, "elsewhere")).status == sp.SESSION_STATUS_ACTIVE
    assert (await get_session(server.sessions, "ended")).status == sp.SESSION_STATUS_COMPLETED


async def test_reconcile_marks_a_bounded_number_per_call_and_says_when_more_remain(
        server, monkeypatch):
    monkeypatch.setattr(sessions_api, "RECONCILE_LIMIT", 3)
    ids = [f"s{i}" for i in range(8)]
    for sid in ids:
        await create_session(server.sessions, sid, runtime_instance="rt-1")
    kept = ["s0", "s4"]
    first = await reconcile(server, "rt-1", keep=kept)
    assert (list(first.marked_session_ids), first.has_more) == (["s1", "s2", "s3"], True)
    second = await reconcile(server, "rt-1", keep=kept)
    assert (list(second.marked_session_ids), second.has_more) == (["s5", "s6", "s7"], False)
    assert second.revision > first.revision > 0
    third = await reconcile(server, "rt-1", keep=kept)
    assert (list(third.marked_session_ids), third.has_more, third.revision) == ([], False, 0)
    for sid in ids:
        want = sp.SESSION_STATUS_ACTIVE if sid in kept else sp.SESSION_STATUS_UNKNOWN
        assert (await get_session(server.sessions, sid)).status == want


async def test_reconcile_stops_marking_at_a_byte_bound_too(server, monkeypatch):
    """Each marked session goes whole into its event, all in one revision: a call
    stops once the marked sessions reach RECONCILE_EVENT_BYTES (the session that
    crosses it is marked), and has_more says to call again."""
    monkeypatch.setattr(store_logic, "RECONCILE_EVENT_BYTES", 100_000)
    ids = [f"s{i}" for i in range(5)]
    for sid in ids:
        await create_session(server.sessions, sid, runtime_instance="rt-1", goal="g" * 40_000)
    first = await reconcile(server, "rt-1", keep=[])
    assert (list(first.marked_session_ids), first.has_more) == (["s0", "s1", "s2"], True)
    second = await reconcile(server, "rt-1", keep=[])
    assert (list(second.marked_session_ids), second.has_more) == (["s3", "s4"], False)
    for sid in ids:
        assert (await get_session(server.sessions, sid)).status == sp.SESSION_STATUS_UNKNOWN


async def test_reconcile_includes_abandoned_sessions_and_records_the_reason(make_server):
    server = await make_server(abandoned_after_seconds=60)
    await create_session(server.sessions, "old", runtime_instance="rt-1")
    server.clock.advance(120)
    assert (await get_session(server.sessions, "old")).status == sp.SESSION_STATUS_ABANDONED
    answer = await reconcile(server, "rt-1", reason="oom killed")
    assert list(answer.marked_session_ids) == ["old"]
    s = await get_session(server.sessions, "old")
    assert (s.status, s.end_reason) == (sp.SESSION_STATUS_UNKNOWN, "oom killed")


async def test_reconcile_with_nothing_to_mark_returns_revision_zero(server):
    await create_session(server.sessions, "a", runtime_instance="rt-1")
    answer = await reconcile(server, "rt-1", keep=["a"])
    assert list(answer.marked_session_ids) == []
    assert answer.revision == 0


async def test_reconcile_without_runtime_instance_is_invalid_argument(server):
    await expect_bad_request(
        server.sessions.ReconcileSessions(ss.ReconcileSessionsRequest()), "runtime_instance"
    )


async def test_unknown_session_becomes_active_again_on_append(server):
    await create_session(server.sessions, "s1", runtime_instance="rt-1")
    await reconcile(server, "rt-1")
    answer = await append(server.messages, "s1", user("back"))
    assert answer.session.status == sp.SESSION_STATUS_ACTIVE


# PurgeSessions ---------------------------------------------------------------------------


async def make_sessions_idle_since(server, ages: dict[str, int]) -> int:
    """Create sessions idle for the given seconds; return the clock's time, when they are."""
    ordered = sorted(ages.items(), key=lambda kv: -kv[1])
    previous_age = ordered[0][1]
    for sid, age in ordered:
        server.clock.advance(previous_age - age)
        await create_session(server.sessions, sid)
        await append(server.messages, sid, user(f"text of {sid}"))
        previous_age = age
    return server.clock.advance(previous_age)


async def test_purge_by_last_activity_removes_idle_sessions_with_their_messages(server):
    now = await make_sessions_idle_since(server, {"old1": 300, "old2": 200, "new": 10})
    answer = await server.sessions.PurgeSessions(
        ss.PurgeSessionsRequest(last_activity_before=timestamp(now - 100_000_000))
    )
    assert answer.purged_count == 2
    assert not answer.has_more
    assert answer.revision > 0
    assert await list_ids(server) == ["new"]
    for sid in ("old1", "old2"):
        await expect_failure(
            server.messages.ListMessages(ms.ListMessagesRequest(session_id=sid)),
            NOT_FOUND,
            "SESSION_NOT_FOUND",
        )
    assert await server.check_consistency() == []


async def test_purge_keep_newest_keeps_the_most_recently_active(server):
    await make_sessions_idle_since(server, {"a": 400, "b": 300, "c": 200, "d": 100})
    answer = await server.sessions.PurgeSessions(ss.PurgeSessionsRequest(keep_newest=2))
    assert answer.purged_count == 2
    assert await list_ids(server) == ["c", "d"]


async def test_purge_dry_run_counts_without_removing(server):
    now = await make_sessions_idle_since(server, {"a": 400, "b": 300, "c": 10})
    before = await server.sessions.ListSessions(ss.ListSessionsRequest())
    answer = await server.sessions.PurgeSessions(
        ss.PurgeSessionsRequest(last_activity_before=timestamp(now - 60_000_000), dry_run=True)
    )
    assert answer.purged_count == 2
    assert answer.revision == 0
    after = await server.sessions.ListSessions(ss.ListSessionsRequest())
    assert after.total_size == 3
    assert after.revision == before.revision


async def test_purge_limited_to_statuses_leaves_the_others(server):
    now = await make_sessions_idle_since(server, {"done": 300, "live": 300, "failed": 300})
    await end(server, "done", sp.SESSION_STATUS_COMPLETED)
    await end(server, "failed", sp.SESSION_STATUS_FAILED)
    answer = await server.sessions.PurgeSessions(
        ss.PurgeSessionsRequest(
            last_activity_before=timestamp(now + 1),
            statuses=[sp.SESSION_STATUS_COMPLETED],
        )
    )
    assert answer.purged_count == 1
    assert await list_ids(server) == ["failed", "live"]


async def test_purge_with_nothing_matching_returns_zero_and_revision_zero(server):
    await create_session(server.sessions, "a")
    answer = await server.sessions.PurgeSessions(ss.PurgeSessionsRequest(keep_newest=5))
    assert (answer.purged_count, answer.revision, answer.has_more) == (0, 0, False)


async def test_purge_without_age_or_count_is_invalid_argument(server):
    await create_session(server.sessions, "a")
    failure = await expect_failure(
        server.sessions.PurgeSessions(ss.PurgeSessionsRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert failure.fields, failure.describe()
    assert await list_ids(server) == ["a"]


async def test_purge_with_negative_keep_newest_is_invalid_argument(server):
    await expect_bad_request(
        server.sessions.PurgeSessions(ss.PurgeSessionsRequest(keep_newest=-1)), "keep_newest"
    )


# ABANDONED at read time ------------------------------------------------------------------


async def test_active_session_reads_abandoned_after_the_threshold_without_a_write(make_server):
    server = await make_server(abandoned_after_seconds=600)
    created = await server.sessions.CreateSession(
        ss.CreateSessionRequest(session=sp.Session(id="s1"))
    )
    server.clock.advance(599)
    assert (await get_session(server.sessions, "s1")).status == sp.SESSION_STATUS_ACTIVE
    server.clock.advance(2)
    got = await server.sessions.GetSession(ss.GetSessionRequest(session_id="s1"))
    assert got.session.status == sp.SESSION_STATUS_ABANDONED
    assert got.session.revision == created.revision
    assert got.revision == created.revision  # nothing was written by reading
    assert got.session.etag == created.session.etag


async def test_abandoned_sessions_are_filtered_apart_from_active_ones(make_server):
    server = await make_server(abandoned_after_seconds=600)
    await create_session(server.sessions, "idle")
    server.clock.advance(1000)
    await create_session(server.sessions, "fresh")
    assert await list_ids(server, statuses=[sp.SESSION_STATUS_ABANDONED]) == ["idle"]
    assert await list_ids(server, statuses=[sp.SESSION_STATUS_ACTIVE]) == ["fresh"]
    both = [sp.SESSION_STATUS_ACTIVE, sp.SESSION_STATUS_ABANDONED]
    assert await list_ids(server, statuses=both) == ["fresh", "idle"]
    listed = await server.sessions.ListSessions(ss.ListSessionsRequest())
    statuses = {s.id: s.status for s in listed.sessions}
    assert statuses == {"idle": sp.SESSION_STATUS_ABANDONED, "fresh": sp.SESSION_STATUS_ACTIVE}


async def test_activity_brings_an_abandoned_session_back_to_active(make_server):
    server = await make_server(abandoned_after_seconds=600)
    await create_session(server.sessions, "s1")
    server.clock.advance(1000)
    answer = await append(server.messages, "s1", user("still here"))
    assert answer.session.status == sp.SESSION_STATUS_ACTIVE


@pytest.mark.parametrize("settle", ["end", "reconcile"])
async def test_only_active_sessions_ever_read_abandoned(make_server, settle):
    server = await make_server(abandoned_after_seconds=60)
    await create_session(server.sessions, "s1", runtime_instance="rt-1")
    if settle == "end":
        await end(server, "s1")
    else:
        await reconcile(server, "rt-1")
    server.clock.advance(3600)
    status = (await get_session(server.sessions, "s1")).status
    assert status != sp.SESSION_STATUS_ABANDONED
    assert await list_ids(server, statuses=[sp.SESSION_STATUS_ABANDONED]) == []


# ListSessions filters --------------------------------------------------------------------


async def test_list_sessions_filters_match_every_set_field(server):
    await create_session(
        server.sessions, "a", kind=sp.SESSION_KIND_AUTONOMOUS, channel="discord.clamps",
        agent="ag1", model="m1", owner_id="u1", dataset_id="d1", labels={"env": "prod"},
        runtime_instance="rt-1",
    )
    await create_session(
        server.sessions, "b", kind=sp.SESSION_KIND_INTERACTIVE, channel="discord",
        agent="ag2", model="m2", owner_id="u2", dataset_id="d1",
        labels={"env": "prod", "team": "x"}, runtime_instance="rt-2",
    )
    await create_session(
        server.sessions, "c", kind=sp.SESSION_KIND_AGENT_TO_AGENT, channel="discordx",
        agent="ag1", model="m1", owner_id="u1", dataset_id="d2", labels={"env": "dev"},
    )
    assert await list_ids(server) == ["a", "b", "c"]
    assert await list_ids(server, session_ids=["a", "c", "zz"]) == ["a", "c"]
    assert await list_ids(server, kinds=[sp.SESSION_KIND_AUTONOMOUS]) == ["a"]
    assert await list_ids(server, channels=["discord.clamps"]) == ["a"]
    assert await list_ids(server, channels=["discord"]) == ["b"]
    assert await list_ids(server, channels=["discord."]) == ["a", "b"]
    assert await list_ids(server, agents=["ag1"]) == ["a", "c"]
    assert await list_ids(server, models=["m2"]) == ["b"]
    assert await list_ids(server, owner_ids=["u2", "u1"]) == ["a", "b", "c"]
    assert await list_ids(server, dataset_ids=["d1"]) == ["a", "b"]
    assert await list_ids(server, labels={"env": "prod"}) == ["a", "b"]
    assert await list_ids(server, labels={"env": "prod", "team": "x"}) == ["b"]
    assert await list_ids(server, runtime_instances=["rt-2"]) == ["b"]
    assert await list_ids(server, agents=["ag1"], dataset_ids=["d1"]) == ["a"]


async def test_list_sessions_filters_by_started_and_last_activity_ranges(server):
    t0 = server.clock.now_micros()
    await create_session(server.sessions, "a")
    t1 = server.clock.advance(10)
    await create_session(server.sessions, "b")
    t2 = server.clock.advance(10)
    await create_session(server.sessions, "c")
    server.clock.advance(10)
    await append(server.messages, "a", user("late"))
    started = sp.TimeRange(start=timestamp(t1), end=timestamp(t2))
    assert await list_ids(server, started=started) == ["b"]  # [start, end)
    assert await list_ids(server, started=sp.TimeRange(end=timestamp(t1))) == ["a"]
    assert await list_ids(server, started=sp.TimeRange(start=timestamp(t0 + 1))) == ["b", "c"]
    recent = sp.TimeRange(start=timestamp(t2))
    assert await list_ids(server, last_activity=recent) == ["a", "c"]


async def test_list_sessions_finds_stuck_turns_with_running_longer_than(server):
    await create_session(server.sessions, "stuck")
    await create_session(server.sessions, "busy")
    await create_session(server.sessions, "idle")
    await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="stuck", state=sp.RUNTIME_STATE_RUNNING, turn_id="t")
    )
    server.clock.advance(600)
    await server.sessions.SetRuntimeState(
        ss.SetRuntimeStateRequest(session_id="busy", state=sp.RUNTIME_STATE_RUNNING, turn_id="t")
    )
    server.clock.advance(10)
    assert await list_ids(server, running_longer_than_seconds=300) == ["stuck"]
    assert await list_ids(server, running_longer_than_seconds=5) == ["busy", "stuck"]


async def test_list_sessions_text_query_matches_sessions_with_every_word(server):
    await create_session(server.sessions, "a")
    await create_session(server.sessions, "b")
    await create_session(server.sessions, "c")
    await append(server.messages, "a", user("the quick brown fox"), assistant("jumps"))
    await append(server.messages, "b", user("a brown dog"))
    await append(server.messages, "c", user("nothing here"))
    assert await list_ids(server, text_query="brown") == ["a", "b"]
    assert await list_ids(server, text_query="quick fox") == ["a"]
    assert await list_ids(server, text_query="quick dog") == []  # not in one message


@pytest.mark.parametrize(
    "query",
    ['"foo" OR bar*', "'; DROP TABLE sessions; --", "foo AND NOT bar", "NEAR(foo bar)",
     "content:foo", '"unbalanced'],
)
async def test_list_sessions_text_query_takes_query_syntax_literally(server, query):
    await create_session(server.sessions, "only-foo")
    await create_session(server.sessions, "prefix")
    await create_session(server.sessions, "literal")
    await append(server.messages, "only-foo", user("foo"))
    await append(server.messages, "prefix", user("barista"))
    await append(server.messages, "literal", user(f"the text {query} verbatim"))
    assert await list_ids(server, text_query=query) == ["literal"]
    assert await list_ids(server) == ["literal", "only-foo", "prefix"]
    assert await server.check_consistency() == []


# Revisions -------------------------------------------------------------------------------


async def test_sequential_writes_take_consecutive_revisions(server):
    created = await server.sessions.CreateSession(
        ss.CreateSessionRequest(session=sp.Session(id="s1"))
    )
    touched = await server.sessions.TouchSession(
        ss.TouchSessionRequest(session=sp.Session(id="s1"))
    )
    appended = await append(server.messages, "s1", user("x"))
    usage = await server.stats.RecordUsage(
        st.RecordUsageRequest(session_id="s1", model="m", usage=sp.Usage(prompt_tokens=1))
    )
    ended = await end(server, "s1")
    revisions = [created.revision, touched.revision, appended.revision, usage.revision,
                 ended.revision]
    assert revisions == list(range(created.revision, created.revision + 5))


async def test_reads_answer_the_revision_they_read_at(server):
    await create_session(server.sessions, "s1")
    last = await append(server.messages, "s1", user("hello world"))
    reads = [
        await server.sessions.GetSession(ss.GetSessionRequest(session_id="s1")),
        await server.sessions.ListSessions(ss.ListSessionsRequest()),
        await server.messages.ListMessages(ms.ListMessagesRequest(session_id="s1")),
        await server.messages.SearchMessages(ms.SearchMessagesRequest(query="hello")),
        await server.stats.GetStats(st.GetStatsRequest()),
        await server.stats.CostByModel(st.CostByModelRequest()),
    ]
    assert [r.revision for r in reads] == [last.revision] * len(reads)


async def test_a_session_carries_the_revision_of_its_last_change(server):
    await create_session(server.sessions, "s1")
    await create_session(server.sessions, "s2")
    changed = await append(server.messages, "s1", user("x"))
    await append(server.messages, "s2", user("y"))
    s1 = await get_session(server.sessions, "s1")
    assert s1.revision == changed.revision
    assert changed.session.revision == changed.revision


# Durability through the CLI ---------------------------------------------------------------


async def test_acknowledged_writes_survive_a_sigkill_of_the_server_process(server_process):
    from sessiond.v1 import message_service_pb2_grpc, session_service_pb2_grpc

    proc = server_process()
    async with grpc.aio.insecure_channel(proc.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        messages = message_service_pb2_grpc.MessageServiceStub(channel)
        await create_session(sessions, "s1")
        last = await append(messages, "s1", user("one"), assistant("two"))
    proc.kill()
    proc.restart()
    async with grpc.aio.insecure_channel(proc.address, options=OWN_SUBCHANNELS) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        messages = message_service_pb2_grpc.MessageServiceStub(channel)
        got = await sessions.GetSession(ss.GetSessionRequest(session_id="s1"))
        assert got.session.message_count == 2
        assert got.revision == last.revision
        stored = await list_all_messages(messages, "s1")
        assert [m.content for m in stored] == ["one", "two"]
        await assert_counters_match_recount(sessions, messages, "s1")


# Concurrency and optimistic concurrency -----------------------------------------------------


async def test_concurrent_identical_creates_create_the_session_once(server):
    request = ss.CreateSessionRequest(session=sp.Session(id="s1", channel="cli"))
    answers = await asyncio.gather(*[server.sessions.CreateSession(request) for _ in range(10)])
    assert sum(a.created for a in answers) == 1
    assert sorted(a.revision == 0 for a in answers) == [False] + [True] * 9
    assert len({a.session.SerializeToString(deterministic=True) for a in answers}) == 1


async def test_any_write_to_a_session_makes_an_older_etag_stale(server):
    created = await create_session(server.sessions, "s1")
    touched = await server.sessions.TouchSession(
        ss.TouchSessionRequest(session=sp.Session(id="s1"))
    )
    assert touched.session.etag != created.etag
    await expect_failure(
        server.sessions.UpdateSession(
            ss.UpdateSessionRequest(
                session=sp.Session(id="s1", agent="x"), update_mask=mask("agent"),
                etag=created.etag,
            )
        ),
        ABORTED,
        "ETAG_MISMATCH",
    )


async def test_purge_by_effective_status_can_target_abandoned_sessions(make_server):
    server = await make_server(abandoned_after_seconds=600)
    await create_session(server.sessions, "idle")
    server.clock.advance(1000)
    await create_session(server.sessions, "fresh")
    answer = await server.sessions.PurgeSessions(
        ss.PurgeSessionsRequest(
            last_activity_before=timestamp(server.clock.now_micros() + 1),
            statuses=[sp.SESSION_STATUS_ABANDONED],
        )
    )
    assert answer.purged_count == 1
    assert await list_ids(server) == ["fresh"]


async def test_an_abandoned_session_can_be_ended(make_server):
    server = await make_server(abandoned_after_seconds=60)
    await create_session(server.sessions, "s1")
    server.clock.advance(120)
    answer = await end(server, "s1", sp.SESSION_STATUS_CANCELLED)
    assert answer.session.status == sp.SESSION_STATUS_CANCELLED
    assert answer.revision > 0


async def test_list_sessions_filters_settled_statuses(server):
    for sid in ("live", "done", "failed", "lost"):
        await create_session(server.sessions, sid, runtime_instance=f"rt-{sid}")
    await end(server, "done")
    await end(server, "failed", sp.SESSION_STATUS_FAILED)
    await reconcile(server, "rt-lost")
    assert await list_ids(server, statuses=[sp.SESSION_STATUS_UNKNOWN]) == ["lost"]
    assert await list_ids(server, statuses=[sp.SESSION_STATUS_COMPLETED]) == ["done"]
    terminal = [sp.SESSION_STATUS_COMPLETED, sp.SESSION_STATUS_FAILED]
    assert await list_ids(server, statuses=terminal) == ["done", "failed"]


async def test_a_channel_with_an_empty_alias_is_invalid_argument(server):
    await expect_bad_request(
        server.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="s1", channel="discord."))
        ),
        "session.channel",
    )


async def test_reconcile_with_more_than_10000_kept_ids_is_invalid_argument(server):
    await create_session(server.sessions, "a", runtime_instance="rt-1")
    await expect_bad_request(
        reconcile(server, "rt-1", keep=[f"k{i}" for i in range(10_001)]), "keep_session_ids"
    )
    assert (await get_session(server.sessions, "a")).status == sp.SESSION_STATUS_ACTIVE


async def test_sessions_survive_a_graceful_terminate_of_the_server_process(server_process):
    from sessiond.v1 import session_service_pb2_grpc

    proc = server_process()
    async with grpc.aio.insecure_channel(proc.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        await create_session(sessions, "s1", agent="kept")
    proc.terminate()
    proc.start()
    async with grpc.aio.insecure_channel(proc.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        assert (await get_session(sessions, "s1")).agent == "kept"


async def test_a_retried_update_with_its_etag_returns_the_session_as_updated(server):
    """The etag is checked only when the update would change something: the retry of an
    applied update (its etag now stale) answers with the session, not ABORTED."""
    created = await create_session(server.sessions, "s1", display_name="v0")
    request = ss.UpdateSessionRequest(session=sp.Session(id="s1", display_name="v1"),
                                      update_mask=mask("display_name"), etag=created.etag)
    applied = await server.sessions.UpdateSession(request)
    retried = await server.sessions.UpdateSession(request)
    assert retried.session == applied.session
    assert retried.revision == 0
    # A stale etag with a change to make is still refused.
    await expect_failure(
        server.sessions.UpdateSession(ss.UpdateSessionRequest(
            session=sp.Session(id="s1", display_name="v2"), update_mask=mask("display_name"),
            etag=created.etag)),
        ABORTED, "ETAG_MISMATCH")
    assert (await get_session(server.sessions, "s1")).display_name == "v1"
