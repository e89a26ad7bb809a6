"""Authentication and tenant isolation: API keys map to principals, the store filters by scope.

Two tenants, admins, writers with a dataset grant and a reader; every read RPC must show each
caller exactly the sessions its grant covers (out-of-scope reads answer NOT_FOUND), writes are
limited by role and by ownership, and health and reflection need no key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import expect_bad_request, expect_failure, rpc_failure, user
from principals import (
    Caller,
    Grant,
    assert_sees_exactly,
    close_all,
    next_event_ids,
    write_key_file,
)
from sessiond.v1 import (
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)

ss = session_service_pb2
ms = message_service_pb2
st = stats_service_pb2
S = session_pb2

GRANTS = [
    Grant("admin-a", "acme", "admin", "root"),
    Grant("alice", "acme", "writer", "alice", ("ds1",)),
    Grant("bob", "acme", "writer", "bob", ("ds1",)),
    Grant("carol", "acme", "reader", "carol", ("ds1",)),
    Grant("dave", "acme", "reader", "dave"),
    Grant("admin-b", "globex", "admin", "root"),
    Grant("alice-b", "globex", "writer", "alice"),
]
WORD = "zebra"


@dataclasses.dataclass
class World:
    server: Any
    keys: dict[str, str]
    callers: dict[str, Caller]

    def __getitem__(self, name: str) -> Caller:
        return self.callers[name]


async def seed(caller: Caller, sid: str, dataset: str = "") -> None:
    await caller.sessions.CreateSession(ss.CreateSessionRequest(
        session=S.Session(id=sid, dataset_id=dataset)))
    await caller.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id=sid, messages=[user(f"{WORD} in {sid}")]))
    await caller.stats.RecordUsage(st.RecordUsageRequest(
        session_id=sid, model="m", usage=S.Usage(cost_micros=1)))


@pytest.fixture
async def world(make_server: Any, tmp_path: Path) -> Any:
    keys = write_key_file(tmp_path / "keys.toml", GRANTS)
    server = await make_server(api_keys_file=tmp_path / "keys.toml")
    callers = {name: Caller(server.address, key) for name, key in keys.items()}
    callers["anonymous"] = Caller(server.address)
    await seed(callers["alice"], "s-alice")
    await seed(callers["alice"], "s-alice-ds1", "ds1")
    await seed(callers["bob"], "s-bob")
    await seed(callers["bob"], "s-bob-ds1", "ds1")
    await seed(callers["admin-a"], "s-other", "ds2")
    # The same id in another tenant is another session.
    await seed(callers["alice-b"], "s-alice")
    yield World(server, keys, callers)
    await close_all(callers.values())


ACME = {"s-alice", "s-alice-ds1", "s-bob", "s-bob-ds1", "s-other"}
VISIBLE = {
    "admin-a": ACME,
    "alice": {"s-alice", "s-alice-ds1", "s-bob-ds1"},
    "bob": {"s-bob", "s-bob-ds1", "s-alice-ds1"},
    "carol": {"s-alice-ds1", "s-bob-ds1"},
    "dave": set(),
    "admin-b": {"s-alice"},
    "alice-b": {"s-alice"},
}


@pytest.mark.parametrize("name", sorted(VISIBLE))
async def test_each_caller_reads_exactly_its_own_and_granted_sessions(world: World, name: str
                                                                      ) -> None:
    tenant = next(g.tenant for g in GRANTS if g.name == name)
    universe = ACME if tenant == "acme" else {"s-alice"}
    await assert_sees_exactly(world[name], VISIBLE[name], universe - VISIBLE[name], WORD)


async def test_the_same_id_in_two_tenants_holds_each_tenants_own_data(world: World) -> None:
    a = await world["alice"].messages.ListMessages(ms.ListMessagesRequest(session_id="s-alice"))
    b = await world["alice-b"].messages.ListMessages(ms.ListMessagesRequest(session_id="s-alice"))
    assert [m.content for m in a.messages] == [f"{WORD} in s-alice"]
    assert len(b.messages) == 1
    got = await world["alice-b"].sessions.GetSession(ss.GetSessionRequest(session_id="s-alice"))
    assert got.session.tenant == "globex"


async def test_a_page_token_is_good_only_for_the_caller_it_was_issued_to(world: World) -> None:
    """A token may carry what its caller's listing counted (total_size) and where it
    stopped: another tenant, or a caller of the same tenant who sees less, gets
    INVALID_ARGUMENT naming page_token, not the first caller's count."""
    first = await world["admin-a"].sessions.ListSessions(ss.ListSessionsRequest(page_size=1))
    assert first.total_size == len(ACME) and first.next_page_token
    search = await world["admin-a"].messages.SearchMessages(ms.SearchMessagesRequest(
        query=WORD, page_size=1))
    await world["alice"].messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s-alice", messages=[user("more")]))
    listing = await world["admin-a"].messages.ListMessages(ms.ListMessagesRequest(
        session_id="s-alice", page_size=1))
    assert search.next_page_token and listing.next_page_token
    for name in ("admin-b", "alice"):
        caller = world[name]
        await expect_bad_request(caller.sessions.ListSessions(ss.ListSessionsRequest(
            page_size=1, page_token=first.next_page_token)), "page_token")
        await expect_bad_request(caller.messages.SearchMessages(ms.SearchMessagesRequest(
            query=WORD, page_size=1, page_token=search.next_page_token)), "page_token")
        await expect_bad_request(caller.messages.ListMessages(ms.ListMessagesRequest(
            session_id="s-alice", page_size=1, page_token=listing.next_page_token)),
            "page_token")
    # The caller it was issued to goes on with it.
    second = await world["admin-a"].sessions.ListSessions(ss.ListSessionsRequest(
        page_size=1, page_token=first.next_page_token))
    assert second.total_size == len(ACME) and second.sessions[0].id != first.sessions[0].id


async def test_a_users_shared_state_is_that_users_and_the_admins_only(world: World) -> None:
    """The application's state is the tenant's; a user's state is open to that user and
    to admins only: another user (or a reader granted a dataset) is PERMISSION_DENIED,
    directly and inside a CreateSession or AppendMessages, and nothing changes."""
    def delta(value: str) -> S.StateDelta:
        return S.StateDelta(set={"k": json.dumps(value)})

    await world["bob"].sessions.UpdateSharedState(ss.UpdateSharedStateRequest(
        app="adk", user_id="bob", delta=delta("bob's")))
    await world["alice"].sessions.UpdateSharedState(ss.UpdateSharedStateRequest(
        app="adk", delta=delta("the app's")))
    for name in ("alice", "carol"):
        await expect_failure(world[name].sessions.GetSharedState(ss.GetSharedStateRequest(
            app="adk", user_id="bob")), grpc.StatusCode.PERMISSION_DENIED, "OWNER_NOT_ALLOWED")
        app = await world[name].sessions.GetSharedState(ss.GetSharedStateRequest(app="adk"))
        assert json.loads(app.state.state_json) == {"k": "the app's"}
    planted = [S.SharedStateDelta(app="adk", user_id="bob", delta=delta("alice's"))]
    for call in (
        world["alice"].sessions.UpdateSharedState(ss.UpdateSharedStateRequest(
            app="adk", user_id="bob", delta=delta("alice's"))),
        world["alice"].sessions.CreateSession(ss.CreateSessionRequest(
            session=S.Session(id="with-state"), shared_state_deltas=planted)),
        world["alice"].messages.AppendMessages(ms.AppendMessagesRequest(
            session_id="s-alice", messages=[user("hi")], shared_state_deltas=planted)),
    ):
        await expect_failure(call, grpc.StatusCode.PERMISSION_DENIED, "OWNER_NOT_ALLOWED")
    for name in ("bob", "admin-a"):
        state = await world[name].sessions.GetSharedState(ss.GetSharedStateRequest(
            app="adk", user_id="bob"))
        assert json.loads(state.state.state_json) == {"k": "bob's"}
    own = await world["alice"].sessions.UpdateSharedState(ss.UpdateSharedStateRequest(
        app="adk", user_id="alice", delta=delta("alice's own")))
    assert json.loads(own.state.state_json) == {"k": "alice's own"}
    await expect_failure(world["admin-a"].sessions.GetSession(ss.GetSessionRequest(
        session_id="with-state")), grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


async def test_a_watch_delivers_only_events_of_sessions_in_scope(world: World) -> None:
    carol = world["carol"].sessions.WatchSessions(ss.WatchSessionsRequest())
    first = await carol.read()
    assert first.type == ss.WATCH_RESPONSE_TYPE_CREATED
    # Out of carol's scope: bob's own session, another tenant, another dataset.
    await world["bob"].messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s-bob", messages=[user("private")]))
    await world["alice-b"].messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s-alice", messages=[user("elsewhere")]))
    await world["admin-a"].messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s-other", messages=[user("ds2")]))
    # In scope: dataset ds1.
    await world["alice"].messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s-alice-ds1", messages=[user("shared")]))
    try:
        assert await next_event_ids(carol, 1) == ["s-alice-ds1"]
    finally:
        carol.cancel()


async def test_writes_to_sessions_out_of_scope_answer_not_found(world: World) -> None:
    # alice may read s-bob-ds1 through her dataset grant, but grants are for reading.
    for sid in ("s-bob-ds1", "s-bob", "s-other"):
        await expect_failure(world["alice"].messages.AppendMessages(ms.AppendMessagesRequest(
            session_id=sid, messages=[user("x")])), grpc.StatusCode.NOT_FOUND,
            "SESSION_NOT_FOUND")
        await expect_failure(world["alice"].stats.RecordUsage(st.RecordUsageRequest(
            session_id=sid, model="m", usage=S.Usage(cost_micros=5))),
            grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        await expect_failure(world["alice"].sessions.DeleteSession(
            ss.DeleteSessionRequest(session_id=sid)), grpc.StatusCode.NOT_FOUND,
            "SESSION_NOT_FOUND")
    await expect_failure(world["admin-b"].sessions.DeleteSession(
        ss.DeleteSessionRequest(session_id="s-bob")), grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND")
    assert await world.server.check_consistency() == []
    await assert_sees_exactly(world["admin-a"], ACME, set(), WORD)


async def test_a_call_without_a_key_is_unauthenticated(world: World) -> None:
    await expect_failure(world["anonymous"].sessions.GetSession(
        ss.GetSessionRequest(session_id="s-alice")), grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED")


@pytest.mark.parametrize("header", ["Bearer sk_sessiond_not-a-key", "Bearer ",
                                    "Basic dXNlcjpwYXNz", "sk_sessiond_raw", "bearer  x y"])
async def test_an_unknown_or_malformed_key_is_unauthenticated(world: World, header: str
                                                              ) -> None:
    caller = Caller(world.server.address, header=header)
    try:
        for call in (caller.sessions.ListSessions(ss.ListSessionsRequest()),
                     caller.messages.AppendMessages(ms.AppendMessagesRequest())):
            failure = await rpc_failure(call)
            assert failure.code == grpc.StatusCode.UNAUTHENTICATED, failure.describe()
        stream = caller.sessions.WatchSessions(ss.WatchSessionsRequest())
        with pytest.raises(grpc.RpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await caller.close()


async def test_a_bearer_scheme_is_accepted_in_any_case(world: World) -> None:
    caller = Caller(world.server.address, header=f"bearer {world.keys['carol']}")
    try:
        await caller.sessions.GetSession(ss.GetSessionRequest(session_id="s-alice-ds1"))
    finally:
        await caller.close()


WRITES = {
    "CreateSession": lambda c: c.sessions.CreateSession(ss.CreateSessionRequest(
        session=S.Session(id="new"))),
    "UpdateSession": lambda c: c.sessions.UpdateSession(ss.UpdateSessionRequest(
        session=S.Session(id="s-alice-ds1", goal="g"),
        update_mask=field_mask_pb2.FieldMask(paths=["goal"]))),
    "DeleteSession": lambda c: c.sessions.DeleteSession(ss.DeleteSessionRequest(
        session_id="s-alice-ds1")),
    "TouchSession": lambda c: c.sessions.TouchSession(ss.TouchSessionRequest(
        session=S.Session(id="s-alice-ds1"))),
    "EndSession": lambda c: c.sessions.EndSession(ss.EndSessionRequest(
        session_id="s-alice-ds1", status=S.SESSION_STATUS_COMPLETED)),
    "SetRuntimeState": lambda c: c.sessions.SetRuntimeState(ss.SetRuntimeStateRequest(
        session_id="s-alice-ds1", state=S.RUNTIME_STATE_RUNNING)),
    "ForkSession": lambda c: c.sessions.ForkSession(ss.ForkSessionRequest(
        source_session_id="s-alice-ds1")),
    "AppendMessages": lambda c: c.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s-alice-ds1", messages=[user("x")])),
    "PopMessage": lambda c: c.messages.PopMessage(ms.PopMessageRequest(
        session_id="s-alice-ds1")),
    "UpdateLastMessage": lambda c: c.messages.UpdateLastMessage(ms.UpdateLastMessageRequest(
        session_id="s-alice-ds1", message=user("y"))),
    "ClearMessages": lambda c: c.messages.ClearMessages(ms.ClearMessagesRequest(
        session_id="s-alice-ds1")),
    "RecordUsage": lambda c: c.stats.RecordUsage(st.RecordUsageRequest(
        session_id="s-alice-ds1", model="m", usage=S.Usage(cost_micros=1))),
}
ADMIN_ONLY = {
    "ReconcileSessions": lambda c: c.sessions.ReconcileSessions(ss.ReconcileSessionsRequest(
        runtime_instance="rt-1")),
    "PurgeSessions": lambda c: c.sessions.PurgeSessions(ss.PurgeSessionsRequest(
        keep_newest=100, dry_run=True)),
}


@pytest.mark.parametrize("rpc", sorted(WRITES))
async def test_a_reader_calling_a_write_rpc_is_permission_denied_and_nothing_changes(
        world: World, rpc: str) -> None:
    before = world.server.store.revision
    failure = await rpc_failure(WRITES[rpc](world["carol"]))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED, failure.describe()
    assert failure.reason == "PERMISSION_DENIED"
    assert rpc in failure.message and "writer" in failure.message
    assert world.server.store.revision == before


@pytest.mark.parametrize("rpc", sorted(ADMIN_ONLY))
@pytest.mark.parametrize("name", ["alice", "carol"])
async def test_purge_and_reconcile_need_the_admin_role(world: World, rpc: str, name: str
                                                       ) -> None:
    failure = await rpc_failure(ADMIN_ONLY[rpc](world[name]))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED, failure.describe()
    await ADMIN_ONLY[rpc](world["admin-a"])


async def test_an_admin_purge_removes_only_its_own_tenants_sessions(world: World) -> None:
    purged = await world["admin-b"].sessions.PurgeSessions(ss.PurgeSessionsRequest(
        keep_newest=0, last_activity_before=world.server.clock.now_timestamp()))
    assert purged.purged_count == 0  # nothing is older than now: the call is scoped anyway
    world.server.clock.advance(1)
    purged = await world["admin-b"].sessions.PurgeSessions(ss.PurgeSessionsRequest(
        last_activity_before=world.server.clock.now_timestamp()))
    assert purged.purged_count == 1
    await assert_sees_exactly(world["admin-a"], ACME, set(), WORD)


async def test_a_writer_creates_sessions_it_owns_and_sees(world: World) -> None:
    created = await world["alice"].sessions.CreateSession(ss.CreateSessionRequest(
        session=S.Session(id="mine")))
    assert created.session.owner_id == "alice"
    assert created.session.tenant == "acme"
    await world["alice"].sessions.GetSession(ss.GetSessionRequest(session_id="mine"))


@pytest.mark.parametrize("fields, reason", [
    ({"owner_id": "bob"}, "OWNER_NOT_ALLOWED"),
    ({"dataset_id": "ds2"}, "DATASET_NOT_ALLOWED"),
])
async def test_a_writer_cannot_create_sessions_for_others_or_in_ungranted_datasets(
        world: World, fields: dict[str, str], reason: str) -> None:
    for call in (world["alice"].sessions.CreateSession(ss.CreateSessionRequest(
                     session=S.Session(id="planted", **fields))),
                 world["alice"].sessions.TouchSession(ss.TouchSessionRequest(
                     session=S.Session(id="planted", **fields))),
                 world["alice"].sessions.UpdateSession(ss.UpdateSessionRequest(
                     session=S.Session(id="s-alice", **fields),
                     update_mask=field_mask_pb2.FieldMask(paths=list(fields))))):
        await expect_failure(call, grpc.StatusCode.PERMISSION_DENIED, reason)
    await expect_failure(world["admin-a"].sessions.GetSession(
        ss.GetSessionRequest(session_id="planted")), grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND")


async def test_an_admin_may_create_sessions_for_any_owner_of_its_tenant(world: World) -> None:
    await world["admin-a"].sessions.CreateSession(ss.CreateSessionRequest(
        session=S.Session(id="for-bob", owner_id="bob")))
    await world["bob"].sessions.GetSession(ss.GetSessionRequest(session_id="for-bob"))


async def test_health_and_reflection_need_no_key(world: World) -> None:
    channel = world["anonymous"].channel
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))
    async for response in call:
        names = {s.name for s in response.list_services_response.service}
        assert "sessiond.v1.SessionService" in names
        break
    call.cancel()


def test_every_rpc_has_a_role_in_the_table() -> None:
    from sessiond.v1 import message_service_pb2 as m
    from sessiond.v1 import stats_service_pb2 as s
    from sessiond_server.app import SERVICE_NAMES
    from sessiond_server.auth import METHOD_ROLES

    methods = set()
    for module in (session_service_pb2, m, s):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in SERVICE_NAMES
            methods.update(f"/{service.full_name}/{x.name}" for x in service.methods)
    assert methods == set(METHOD_ROLES)


async def test_api_keys_never_reach_the_log(world: World, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    caplog.set_level(logging.DEBUG)
    await world["alice"].sessions.GetSession(ss.GetSessionRequest(session_id="s-alice"))
    await rpc_failure(world["carol"].messages.ClearMessages(
        ms.ClearMessagesRequest(session_id="s-alice-ds1")))
    bogus = Caller(world.server.address, "sk_sessiond_guessed-key-material")
    await rpc_failure(bogus.sessions.ListSessions(ss.ListSessionsRequest()))
    await bogus.close()
    text = caplog.text
    assert "denied" in text  # denials are logged, by principal and method
    for secret in (*world.keys.values(), "guessed-key-material"):
        assert secret not in text


async def test_a_json_key_file_works_like_toml(make_server: Any, tmp_path: Path) -> None:
    keys = write_key_file(tmp_path / "keys.json", [Grant("w", "t", "writer", "w")])
    server = await make_server(api_keys_file=tmp_path / "keys.json")
    caller = Caller(server.address, keys["w"])
    try:
        created = await caller.sessions.CreateSession(ss.CreateSessionRequest())
        assert created.session.tenant == "t" and created.session.owner_id == "w"
    finally:
        await caller.close()


@pytest.mark.parametrize("content, complaint", [
    ('[[keys]]\nsha256 = "sk_sessiond_plaintext"\ntenant = "t"\nrole = "admin"\n', "sha256"),
    ('[[keys]]\nsha256 = "' + "a" * 64 + '"\ntenant = "t"\nrole = "root"\n', "role"),
    ('[[keys]]\nsha256 = "' + "a" * 64 + '"\nrole = "admin"\n', "tenant"),
    ('[[keys]]\nsha256 = "' + "a" * 64 + '"\ntenant = "t"\nrole = "writer"\n', "user_id"),
    ('[[keys]]\nsha256 = "' + "a" * 64 + '"\ntenant = "t"\nrole = "admin"\nkey = "x"\n',
     "unknown"),
    ("keys = 3\n", "keys"),
    ("[[keys]\n", "not valid"),
])
async def test_a_bad_key_file_refuses_to_start_and_names_the_problem(
        make_server: Any, tmp_path: Path, content: str, complaint: str) -> None:
    from sessiond_server.auth import KeyFileError

    path = tmp_path / "keys.toml"
    path.write_text(content)
    database = tmp_path / "untouched.db"
    with pytest.raises(KeyFileError, match=complaint):
        await make_server(api_keys_file=path, database=database)
    assert not database.exists()


def test_the_mint_command_prints_a_key_and_an_entry_that_holds_only_its_hash(
        tmp_path: Path) -> None:
    from sessiond_server.auth import hash_key, load_api_keys

    out = subprocess.run(
        [sys.executable, "-m", "sessiond_server.auth", "mint", "--tenant", "acme",
         "--role", "reader", "--user", "eve", "--dataset", "ds1"],
        check=True, capture_output=True, text=True).stdout
    key = next(line[2:] for line in out.splitlines() if line.startswith("# sk_sessiond_"))
    entry = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    assert key not in entry
    (tmp_path / "keys.toml").write_text(entry)
    principal = load_api_keys(tmp_path / "keys.toml")[hash_key(key)]
    assert (principal.tenant, principal.user_id, principal.role) == ("acme", "eve", "reader")
    assert principal.dataset_ids == {"ds1"}


async def test_many_concurrent_callers_each_see_only_their_scope(world: World) -> None:
    names = ["alice", "bob", "carol", "alice-b"]
    lists = await asyncio.gather(*(
        world[n].sessions.ListSessions(ss.ListSessionsRequest()) for n in names * 10))
    for name, listed in zip(names * 10, lists, strict=True):
        assert {s.id for s in listed.sessions} == VISIBLE[name]
