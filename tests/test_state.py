"""Session state and shared state, through gRPC on both backends.

A session's state_json is set at creation, replaced by UpdateSession and changed
by an append's state_delta in the same transaction as the messages; shared state
(per application, per user) is read and compare-and-set on its own, or changed by
the same append. Each test states one rule of the proto comments.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from harness import (
    append,
    assistant,
    create_session,
    expect_bad_request,
    expect_failure,
    get_session,
    user,
)
from sessiond.v1 import event_pb2
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from watch_validator import WatchRecorder

EXACT = '{"big":12345678901234567890,"small":0.1,"text":"ünï ✓","list":[1,{"a":null}]}'


def delta(remove: tuple[str, ...] = (), **values: Any) -> sp.StateDelta:
    return sp.StateDelta(set={k: json.dumps(v) for k, v in values.items()}, remove=remove)


async def test_state_is_set_at_creation_and_read_back_exactly(server: Any) -> None:
    spaced = (' {"big" : 12345678901234567890, "small": 0.1, "text": "ünï ✓",'
              ' "list": [1, {"a": null}]} ')
    created = await create_session(server.sessions, "s", state_json=spaced)
    assert created.state_json == EXACT
    assert (await get_session(server.sessions, "s")).state_json == EXACT
    bare = await create_session(server.sessions, "bare")
    assert bare.state_json == "{}"
    # An identical create is a retry; another state is another session.
    again = await server.sessions.CreateSession(ss.CreateSessionRequest(
        session=sp.Session(id="s", state_json=EXACT)))
    assert not again.created
    await expect_failure(server.sessions.CreateSession(ss.CreateSessionRequest(
        session=sp.Session(id="s", state_json='{"other":1}'))),
        grpc.StatusCode.ALREADY_EXISTS, "SESSION_EXISTS")


async def test_a_state_that_is_not_a_json_object_is_invalid_argument(server: Any) -> None:
    for bad in ("[1]", "not json", '{"x": NaN}'):
        await expect_bad_request(server.sessions.CreateSession(ss.CreateSessionRequest(
            session=sp.Session(id="s", state_json=bad))), "session.state_json")
    await expect_bad_request(server.sessions.CreateSession(ss.CreateSessionRequest(
        session=sp.Session(id="s", state_json=json.dumps({"x": "y" * 70_000})))),
        "session.state_json")


async def test_update_session_replaces_the_state_whole_under_the_etag(server: Any) -> None:
    created = await create_session(server.sessions, "s", state_json='{"a":1,"b":2}')
    mask = field_mask_pb2.FieldMask(paths=["state_json"])
    updated = await server.sessions.UpdateSession(ss.UpdateSessionRequest(
        session=sp.Session(id="s", state_json='{"c":3}'), update_mask=mask, etag=created.etag))
    assert updated.session.state_json == '{"c":3}'
    await expect_failure(server.sessions.UpdateSession(ss.UpdateSessionRequest(
        session=sp.Session(id="s", state_json='{"d":4}'), update_mask=mask,
        etag=created.etag)), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")


async def test_an_append_applies_its_state_delta_with_the_messages(server: Any) -> None:
    await create_session(server.sessions, "s", state_json='{"keep":true,"drop":1}')
    answer = await append(server.messages, "s", user("hi", id="m1"),
                          state_delta=delta(remove=("drop",), step=1, note="x"))
    assert json.loads(answer.session.state_json) == {"keep": True, "note": "x", "step": 1}
    # Keys keep the order they were first set in; new keys come in key order.
    assert list(json.loads(answer.session.state_json)) == ["keep", "note", "step"]
    await append(server.messages, "s", assistant("yo", id="m2"), state_delta=delta(step=2))
    # A retry of the first append applies nothing again.
    retried = await append(server.messages, "s", user("hi", id="m1"),
                           state_delta=delta(remove=("drop",), step=1, note="x"))
    assert retried.revision == 0
    assert json.loads((await get_session(server.sessions, "s")).state_json)["step"] == 2


async def test_a_failed_append_changes_no_state_anywhere(server: Any) -> None:
    await create_session(server.sessions, "s", state_json='{"n":0}')
    await append(server.messages, "s", user("one"))
    await expect_failure(append(
        server.messages, "s", user("two"), expected_last_seq=0, state_delta=delta(n=1),
        shared_state_deltas=[sp.SharedStateDelta(app="a", delta=delta(n=1))]),
        grpc.StatusCode.ABORTED, "LAST_SEQ_MISMATCH")
    await expect_bad_request(append(
        server.messages, "s", user("three"),
        shared_state_deltas=[sp.SharedStateDelta(app="a", delta=delta(n=1))],
        state_delta=delta(big="y" * 70_000)), "state_delta")
    stored = await get_session(server.sessions, "s")
    assert (stored.state_json, stored.message_count) == ('{"n":0}', 1)
    shared = await server.sessions.GetSharedState(ss.GetSharedStateRequest(app="a"))
    assert (shared.state.state_json, shared.state.etag) == ("{}", "0")


async def test_bad_deltas_name_their_field(server: Any) -> None:
    await create_session(server.sessions, "s")
    await expect_bad_request(append(server.messages, "s", user("x"), state_delta=sp.StateDelta(
        set={"k": "not json"})), "state_delta")
    await expect_bad_request(append(server.messages, "s", user("x"), state_delta=sp.StateDelta(
        set={"k": "1"}, remove=["k"])), "state_delta")
    await expect_bad_request(append(server.messages, "s", user("x"), shared_state_deltas=[
        sp.SharedStateDelta(delta=delta(k=1))]), "shared_state_deltas[0].app")


async def test_shared_state_is_compare_and_set_per_app_and_user(server: Any) -> None:
    get = server.sessions.GetSharedState
    update = server.sessions.UpdateSharedState
    first = await update(ss.UpdateSharedStateRequest(app="bot", delta=delta(theme="dark"),
                                                     etag="0"))
    assert (first.state.state_json, first.state.etag) == ('{"theme":"dark"}', "1")
    await expect_failure(update(ss.UpdateSharedStateRequest(
        app="bot", delta=delta(theme="light"), etag="0")), grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH")
    # The repeat of an applied delta changes nothing and answers the state, whatever the etag.
    repeat = await update(ss.UpdateSharedStateRequest(app="bot", delta=delta(theme="dark"),
                                                      etag="0"))
    assert repeat.state.etag == "1"
    mine = await update(ss.UpdateSharedStateRequest(app="bot", user_id="ada",
                                                    delta=delta(name="Ada")))
    assert mine.state.state_json == '{"name":"Ada"}'
    assert (await get(ss.GetSharedStateRequest(app="bot"))).state.state_json == \
        '{"theme":"dark"}'
    other = await get(ss.GetSharedStateRequest(app="bot", user_id="bob"))
    assert (other.state.state_json, other.state.etag) == ("{}", "0")
    await expect_bad_request(get(ss.GetSharedStateRequest()), "app")


async def test_one_append_commits_session_app_and_user_state_together(server: Any) -> None:
    await create_session(server.sessions, "s")
    answer = await append(
        server.messages, "s", assistant("noted", id="e1"), state_delta=delta(turn=1),
        shared_state_deltas=[
            sp.SharedStateDelta(app="bot", delta=delta(visits=1)),
            sp.SharedStateDelta(app="bot", user_id="ada", delta=delta(likes="tea")),
        ])
    assert answer.session.state_json == '{"turn":1}'
    app = await server.sessions.GetSharedState(ss.GetSharedStateRequest(app="bot"))
    ada = await server.sessions.GetSharedState(ss.GetSharedStateRequest(app="bot",
                                                                        user_id="ada"))
    assert (app.state.state_json, ada.state.state_json) == ('{"visits":1}', '{"likes":"tea"}')


async def test_forks_start_with_the_state_and_watchers_see_it(server: Any) -> None:
    await create_session(server.sessions, "s", state_json='{"a":1}')
    async with WatchRecorder(server.sessions, name="state") as recorder:
        await recorder.wait_created()
        answer = await append(server.messages, "s", user("x"), state_delta=delta(a=2))
        await recorder.wait_covered(answer.revision)
    appended = [e for e in recorder.stream.events
                if e.type == event_pb2.EVENT_TYPE_MESSAGES_APPENDED]
    assert appended[-1].session.state_json == '{"a":2}'
    fork = await server.sessions.ForkSession(ss.ForkSessionRequest(source_session_id="s",
                                                                   new_session_id="f"))
    assert fork.session.state_json == '{"a":2}'


async def test_list_sessions_returns_each_state(server: Any) -> None:
    await create_session(server.sessions, "a", state_json='{"n":1}')
    await create_session(server.sessions, "b")
    listed = await server.sessions.ListSessions(ss.ListSessionsRequest(ascending=True))
    assert {s.id: s.state_json for s in listed.sessions} == {"a": '{"n":1}', "b": "{}"}


def create_request(session_id: str, *deltas: sp.SharedStateDelta,
                   **fields: Any) -> ss.CreateSessionRequest:
    return ss.CreateSessionRequest(session=sp.Session(id=session_id, **fields),
                                   shared_state_deltas=deltas)


async def shared_state(server: Any, app: str, user_id: str = "") -> tuple[str, str]:
    answer = await server.sessions.GetSharedState(ss.GetSharedStateRequest(app=app,
                                                                           user_id=user_id))
    return answer.state.state_json, answer.state.etag


async def test_create_session_commits_its_shared_state_deltas_with_the_session(
        server: Any) -> None:
    app = sp.SharedStateDelta(app="bot", delta=delta(visits=1))
    ada = sp.SharedStateDelta(app="bot", user_id="ada", delta=delta(likes="tea"))
    first = await server.sessions.CreateSession(create_request("s", app, ada, owner_id="ada"))
    assert first.created and first.revision > 0
    assert await shared_state(server, "bot") == ('{"visits":1}', "1")
    assert await shared_state(server, "bot", "ada") == ('{"likes":"tea"}', "1")
    # Someone moves the app state on; the retry of the creation finds its session,
    # answers it and applies its deltas no second time.
    await server.sessions.UpdateSharedState(ss.UpdateSharedStateRequest(
        app="bot", delta=delta(visits=2)))
    retry = await server.sessions.CreateSession(create_request("s", app, ada, owner_id="ada"))
    assert (retry.created, retry.revision, retry.session) == (False, 0, first.session)
    assert await shared_state(server, "bot") == ('{"visits":2}', "2")


async def test_a_create_that_fails_midway_stores_neither_session_nor_shared_state(
        server: Any) -> None:
    fits = sp.SharedStateDelta(app="bot", delta=delta(visits=1))
    too_big = sp.SharedStateDelta(app="bot", user_id="ada", delta=delta(big="y" * 70_000))
    await expect_bad_request(server.sessions.CreateSession(create_request("s", fits, too_big)),
                             "shared_state_deltas[1].delta")
    await expect_failure(server.sessions.GetSession(ss.GetSessionRequest(session_id="s")),
                         grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    assert await shared_state(server, "bot") == ("{}", "0")
    assert await shared_state(server, "bot", "ada") == ("{}", "0")
    # An id taken with other content: ALREADY_EXISTS, and the deltas stay unapplied.
    await create_session(server.sessions, "taken", agent="other")
    await expect_failure(server.sessions.CreateSession(create_request("taken", fits,
                                                                      agent="bot")),
                         grpc.StatusCode.ALREADY_EXISTS, "SESSION_EXISTS")
    assert await shared_state(server, "bot") == ("{}", "0")


async def test_create_session_names_a_bad_shared_state_delta(server: Any) -> None:
    create = server.sessions.CreateSession
    await expect_bad_request(create(create_request(
        "s", sp.SharedStateDelta(delta=delta(k=1)))), "shared_state_deltas[0].app")
    await expect_bad_request(create(create_request(
        "s", sp.SharedStateDelta(app="bot", delta=sp.StateDelta(set={"k": "not json"})))),
        "shared_state_deltas[0].delta")
    await expect_bad_request(create(create_request(
        "s", *[sp.SharedStateDelta(app=f"a{i}", delta=delta(k=i)) for i in range(17)])),
        "shared_state_deltas")
    await expect_failure(server.sessions.GetSession(ss.GetSessionRequest(session_id="s")),
                         grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
