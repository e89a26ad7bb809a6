"""Export to JSON Lines and import back: identical data, idempotent re-import, runtime history.

"Identical" is checked the strict way: the export of the imported database equals the
original export line for line (the header aside, which names the exporting revision).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sessiond.v1 import (
    message_pb2,
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)
from sessiond_server.config import wall_clock_micros
from sessiond_server.maintenance import (
    DatabaseInUse,
    MaintenanceError,
    export_database,
    import_records,
    read_export,
    read_history,
)
from sessiond_server.store import SQLiteStore

SQLITE = pytest.mark.parametrize("make_server", ["sqlite"], indirect=True)
M = message_pb2


def event_time(micros: int) -> Any:
    stamp = Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


# Client-set event times of chat's first two messages: far before the server's clock.
ASKED, ANSWERED = 1_600_000_000_000_000, 1_600_000_060_000_000


async def populate(server: Any) -> None:
    """Sessions that use every stored feature: labels, tool calls, blocks, usage, end, fork,
    pop, session state, shared state (application and user) and event times."""
    s, m, st = server.sessions, server.messages, server.stats
    await s.CreateSession(session_service_pb2.CreateSessionRequest(session=session_pb2.Session(
        id="chat", channel="telegram.main", agent="helper", model="gpt", owner_id="ann",
        labels={"team": "blue"}, goal="answer", budget_micros=5_000_000,
        state_json='{"step":1,"big":12345678901234567890}'), shared_state_deltas=[
            session_pb2.SharedStateDelta(app="helper", delta=session_pb2.StateDelta(
                set={"plan": '"pro"'})),
            session_pb2.SharedStateDelta(app="helper", user_id="ann", delta=session_pb2.StateDelta(
                set={"name": '"Ann"'}))]))
    await m.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="chat", state_delta=session_pb2.StateDelta(set={"step": "2"}),
        shared_state_deltas=[session_pb2.SharedStateDelta(
            app="helper", user_id="ann", delta=session_pb2.StateDelta(set={"lang": '"de"'}))],
        messages=[
        M.Message(id="u1", role=M.ROLE_USER, content="What is WAL? ünïcødé", name="ann",
                  event_time=event_time(ASKED)),
        M.Message(id="a1", role=M.ROLE_ASSISTANT, content="A journal.", reasoning="think",
                  tool_calls=[M.ToolCall(id="c1", name="search", arguments_json='{"q":1}')],
                  content_blocks=[M.ContentBlock(type="text", json='{"t":"x"}'),
                                  M.ContentBlock(type="img", raw=b"\x00\x01")],
                  metadata={"k": "v"}, provider_response_id="resp-1",
                  event_time=event_time(ANSWERED)),
        M.Message(role=M.ROLE_TOOL, content="result", tool_call_id="c1"),
        M.Message(role=M.ROLE_ASSISTANT, content="draft", status=M.MESSAGE_STATUS_IN_PROGRESS),
    ]))
    server.clock.advance(5)
    await m.UpdateLastMessage(message_service_pb2.UpdateLastMessageRequest(
        session_id="chat", message=M.Message(content="final", status=M.MESSAGE_STATUS_COMPLETE),
        update_mask=field_mask_pb2.FieldMask(paths=["content", "status"])))
    for model, tokens in (("gpt", 100), ("claude", 50)):
        await st.RecordUsage(stats_service_pb2.RecordUsageRequest(
            session_id="chat", model=model, request_id=f"r-{model}",
            usage=session_pb2.Usage(prompt_tokens=tokens, completion_tokens=7, cost_micros=999)))
    await s.ForkSession(session_service_pb2.ForkSessionRequest(
        source_session_id="chat", up_to_seq=2, new_session_id="chat-fork"))
    await m.AppendMessages(message_service_pb2.AppendMessagesRequest(session_id="chat-fork",
                           messages=[M.Message(role=M.ROLE_USER, content="and then?")]))
    await m.PopMessage(message_service_pb2.PopMessageRequest(session_id="chat-fork"))
    server.clock.advance(60)
    await s.CreateSession(session_service_pb2.CreateSessionRequest(session=session_pb2.Session(
        id="job", kind=session_pb2.SESSION_KIND_AUTONOMOUS, owner_id="bob")))
    await s.EndSession(session_service_pb2.EndSessionRequest(
        session_id="job", status=session_pb2.SESSION_STATUS_FAILED, reason="timeout"))
    await s.SetRuntimeState(session_service_pb2.SetRuntimeStateRequest(
        session_id="chat", state=session_pb2.RUNTIME_STATE_RUNNING, turn_id="t9"))
    server.clock.advance(7200)  # every ACTIVE session now reads as ABANDONED: export keeps ACTIVE


def export_text(database: Path, **filters: Any) -> str:
    out = io.StringIO()
    export_database(database, out, **filters)
    return out.getvalue()


def body(text: str) -> list[str]:
    """The records, without the header line."""
    lines = text.splitlines()
    assert json.loads(lines[0])["type"] == "header"
    return lines[1:]


async def import_text(database: Path, text: str) -> dict[str, int]:
    return await import_records(database, read_export(io.StringIO(text)),
                                clock=wall_clock_micros)


@SQLITE
async def test_export_then_import_into_an_empty_database_gives_identical_data(
    make_server: Any, tmp_path: Path
) -> None:
    source = await make_server()
    await populate(source)
    original = await asyncio.to_thread(export_text, source.database)  # while it runs
    records = [json.loads(line) for line in body(original)]
    assert [r["type"] for r in records].count("session") == 3
    assert {r["session"]["status"] for r in records if r["type"] == "session"} == {
        "SESSION_STATUS_ACTIVE", "SESSION_STATUS_FAILED"}
    assert all("revision" not in r.get("session", {}) for r in records)
    chat = next(r["session"] for r in records if r.get("session", {}).get("id") == "chat")
    assert chat["state_json"] == '{"step":2,"big":12345678901234567890}'
    assert [(r["tenant"], r["shared_state"].get("user_id", ""),
             r["shared_state"]["state_json"]) for r in records
            if r["type"] == "shared_state"] == [
        ("default", "", '{"plan":"pro"}'), ("default", "ann", '{"name":"Ann","lang":"de"}')]

    target = tmp_path / "imported.db"
    first = await import_text(target, original)
    assert first["sessions_created"] == 3
    assert first["messages_added"] == 4 + 2  # chat's four, the fork's two (its third popped)
    assert first["shared_states_added"] == 2
    assert body(export_text(target)) == body(original)

    again = await import_text(target, original)
    assert again["sessions_created"] == again["messages_added"] == 0
    assert again["shared_states_added"] == 0
    assert again["revision"] == first["revision"]  # no write took a revision
    assert body(export_text(target)) == body(original)

    # The imported database serves: counters equal recounts, reads and writes work.
    served = await make_server(database=target)
    assert await served.check_consistency() == []
    listed = await served.messages.ListMessages(message_service_pb2.ListMessagesRequest(
        session_id="chat"))
    assert [x.content for x in listed.messages] == [
        "What is WAL? ünïcødé", "A journal.", "result", "final"]
    # State, shared state and event times came across and serve as they did.
    chat_read = await served.sessions.GetSession(session_service_pb2.GetSessionRequest(
        session_id="chat"))
    assert chat_read.session.state_json == '{"step":2,"big":12345678901234567890}'
    # last_event_at is recomputed on import: the last message has no event time.
    assert chat_read.session.last_event_at == listed.messages[-1].created_at
    ann = await served.sessions.GetSharedState(session_service_pb2.GetSharedStateRequest(
        app="helper", user_id="ann"))
    assert (ann.state.state_json, ann.state.etag) == ('{"name":"Ann","lang":"de"}', "2")
    moved = await served.sessions.UpdateSharedState(session_service_pb2.UpdateSharedStateRequest(
        app="helper", user_id="ann", etag="2", delta=session_pb2.StateDelta(set={"x": "1"})))
    assert moved.state.etag == "3"  # compare-and-set goes on from the exported version
    # after_time compares event_time where set: the answer (event time ANSWERED) and the
    # later messages (server time, long after) are after ASKED + 1 µs; the question is not.
    after = await served.messages.ListMessages(message_service_pb2.ListMessagesRequest(
        session_id="chat", after_time=event_time(ASKED + 1)))
    assert [(x.seq, x.event_time.ToMicroseconds()) for x in after.messages] == [
        (2, ANSWERED), (3, 0), (4, 0)]
    fork = await served.sessions.GetSession(session_service_pb2.GetSessionRequest(
        session_id="chat-fork"))
    assert fork.session.last_seq == 3 and fork.session.message_count == 2
    appended = await served.messages.AppendMessages(message_service_pb2.AppendMessagesRequest(
        session_id="chat-fork", messages=[M.Message(role=M.ROLE_USER, content="new")]))
    assert appended.messages[0].seq == 4  # sequence numbers are never reused
    with pytest.raises(DatabaseInUse):
        await import_text(target, original)


@SQLITE
async def test_export_filters_by_owner_and_start_time(make_server: Any) -> None:
    server = await make_server()
    await populate(server)
    by_owner = body(export_text(server.database, owners=["bob"]))
    assert [json.loads(line)["session"]["id"] for line in by_owner] == ["job"]
    # An owner's export holds that user's shared states, not the application's own.
    anns = [json.loads(line) for line in body(export_text(server.database, owners=["ann"]))]
    assert [(r["shared_state"]["app"], r["shared_state"].get("user_id")) for r in anns
            if r["type"] == "shared_state"] == [("helper", "ann")]
    assert [r for r in anns if r["type"] == "shared_state"] == [
        json.loads(line) for line in body(export_text(server.database))
        if '"shared_state"' in line and '"ann"' in line]
    chat = await server.sessions.GetSession(session_service_pb2.GetSessionRequest(
        session_id="job"))
    since = chat.session.started_at.ToMicroseconds()
    sessions = [json.loads(line) for line in body(export_text(server.database,
                                                              since_micros=since))]
    assert {r["session"]["id"] for r in sessions if r["type"] == "session"} == {"job"}
    before = [json.loads(line) for line in body(export_text(server.database,
                                                            until_micros=since))]
    assert {r["session"]["id"] for r in before if r["type"] == "session"} == {"chat",
                                                                             "chat-fork"}


HISTORY = [
    {"role": "system", "content": "You are terse.", "timestamp": "2025-06-15T10:00:00Z"},
    {"role": "user", "content": "List files", "timestamp": "2025-06-15T10:00:01Z"},
    {"role": "assistant", "content": "", "timestamp": 1749981602.5,
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "ls", "arguments": "{\"path\": \".\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"},
    {"role": "assistant", "content": [{"type": "text", "text": "Two files."}]},
]


def write_history(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


async def import_history(database: Path, path: Path) -> dict[str, int]:
    with path.open() as lines:
        chunks = list(read_history(lines, path.stem, agent="coder", source=str(path),
                                   default_micros=1_750_000_000_000_000))
    return await import_records(database, chunks, clock=wall_clock_micros)


@SQLITE
async def test_runtime_history_files_import_once_and_grow(make_server: Any, tmp_path: Path
                                                          ) -> None:
    database = tmp_path / "history.db"
    history = write_history(tmp_path / "run-42.jsonl", HISTORY[:4])
    assert (await import_history(database, history))["messages_added"] == 4
    assert (await import_history(database, history))["messages_added"] == 0
    write_history(history, HISTORY)  # the runtime appended a line
    assert (await import_history(database, history))["messages_added"] == 1

    server = await make_server(database=database)
    assert await server.check_consistency() == []
    session = (await server.sessions.GetSession(session_service_pb2.GetSessionRequest(
        session_id="run-42"))).session
    assert (session.agent, session.message_count, session.tool_call_count) == ("coder", 5, 1)
    assert session.started_at.ToJsonString() == "2025-06-15T10:00:00Z"
    listed = (await server.messages.ListMessages(message_service_pb2.ListMessagesRequest(
        session_id="run-42"))).messages
    assert [x.role for x in listed] == [M.ROLE_SYSTEM, M.ROLE_USER, M.ROLE_ASSISTANT,
                                        M.ROLE_TOOL, M.ROLE_ASSISTANT]
    assert listed[2].tool_calls[0].name == "ls"
    assert listed[2].tool_calls[0].arguments_json == '{"path": "."}'
    assert listed[3].tool_call_id == "call_1"
    assert listed[4].content == "Two files."
    assert listed[2].created_at.ToJsonString() == "2025-06-15T10:00:02.500Z"


def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path) -> None:
    bad = write_history(tmp_path / "bad.jsonl", [{"role": "user", "content": "hi"},
                                                 {"role": "wizard", "content": "?"}])
    with bad.open() as lines, pytest.raises(MaintenanceError, match=r"bad\.jsonl:2: role"):
        list(read_history(lines, "bad", source=str(bad)))
    with pytest.raises(MaintenanceError, match="input:1: not JSON"):
        list(read_export(io.StringIO("{nope\n")))
    orphan = json.dumps({"type": "message", "tenant": "default", "session_id": "x",
                         "message": {}})
    with pytest.raises(MaintenanceError, match="outside its session"):
        list(read_export(io.StringIO(orphan + "\n")))
    header = {"type": "header", "format": "sessiond.export", "revision": 1}
    assert list(read_export(io.StringIO(json.dumps({**header, "version": 1})))) == []
    with pytest.raises(MaintenanceError, match="input:1: not a sessiond export of version"):
        list(read_export(io.StringIO(json.dumps({**header, "version": 3}))))
    shared = {"type": "shared_state", "tenant": "default",
              "shared_state": {"app": "a", "etag": "1", "state_json": "[1]"}}
    with pytest.raises(MaintenanceError, match="input:1: state_json is not a JSON object"):
        list(read_export(io.StringIO(json.dumps(shared))))
    big = {**shared, "shared_state": {"app": "a", "etag": "1",
                                      "state_json": json.dumps({"k": "y" * 70_000})}}
    with pytest.raises(MaintenanceError, match=r"input:1: state_json is \d+ bytes; the limit"):
        list(read_export(io.StringIO(json.dumps(big))))


async def test_the_store_sees_imported_events_in_the_change_log(tmp_path: Path) -> None:
    database = tmp_path / "events.db"
    history = write_history(tmp_path / "s.jsonl", HISTORY[:2])
    await import_history(database, history)
    store = SQLiteStore(database, clock=wall_clock_micros)
    await store.open()
    try:
        changes = await store.read_changes(1, 100)
        assert [c.event.session_id for c in changes] == ["s"]
        assert await store.check_consistency() == []
    finally:
        await store.close()
