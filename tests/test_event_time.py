"""Message.event_time: a client-set time beside created_at, used by after_time reads.

Through gRPC on both backends: a message's after_time comparison uses its
event_time where the client set one and its created_at elsewhere; results stay in
seq order (so equal times keep append order); forks keep the times; a time
outside the Timestamp range is refused naming the field.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from harness import (
    append,
    assert_counters_match_recount,
    create_session,
    expect_bad_request,
    user,
)
from sessiond.v1 import event_pb2
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_service_pb2 as ss
from watch_validator import WatchRecorder


def at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


async def after(server: Any, session_id: str, seconds: int) -> list[str]:
    page = await server.messages.ListMessages(ms.ListMessagesRequest(
        session_id=session_id, after_time=at(seconds)))
    return [m.content for m in page.messages]


async def test_after_time_reads_the_event_time_where_the_client_set_one(server: Any) -> None:
    now = server.clock.now_micros() // 1_000_000
    await create_session(server.sessions, "s")
    stored = await append(server.messages, "s",
                          user("old event", event_time=at(now - 100)),
                          user("no event time"),
                          user("also old", event_time=at(now - 100)),
                          user("future", event_time=at(now + 100)))
    assert stored.messages[0].event_time == at(now - 100)
    assert not stored.messages[1].HasField("event_time")
    # Equal event times keep append (seq) order.
    assert await after(server, "s", now - 100) == ["old event", "no event time", "also old",
                                                   "future"]
    assert await after(server, "s", now - 50) == ["no event time", "future"]
    assert await after(server, "s", now + 1) == ["future"]
    listed = await server.messages.ListMessages(ms.ListMessagesRequest(session_id="s"))
    assert [m.event_time for m in listed.messages if m.HasField("event_time")] == [
        at(now - 100), at(now - 100), at(now + 100)]
    fork = await server.sessions.ForkSession(ss.ForkSessionRequest(
        source_session_id="s", new_session_id="f"))
    assert fork.session.message_count == 4
    assert await after(server, "f", now - 50) == ["no event time", "future"]


async def test_an_event_time_outside_the_timestamp_range_is_refused(server: Any) -> None:
    await create_session(server.sessions, "s")
    await expect_bad_request(append(server.messages, "s", user(
        "x", event_time=Timestamp(seconds=300_000_000_000))), "messages[0].event_time")


async def test_last_event_at_follows_the_newest_message_through_every_rewrite(
    server: Any,
) -> None:
    """Session.last_event_at: the newest message's event_time, else its created_at; unset
    with no messages; after every write equal to a recompute from the messages."""
    now = server.clock.now_micros() // 1_000_000

    async def check(expected: Timestamp | None, session_id: str = "s") -> None:
        got = (await server.sessions.GetSession(ss.GetSessionRequest(
            session_id=session_id))).session
        if expected is None:
            assert not got.HasField("last_event_at")
        else:
            assert got.last_event_at == expected
        await assert_counters_match_recount(server.sessions, server.messages, session_id)

    created = await create_session(server.sessions, "s")
    assert not created.HasField("last_event_at")
    stored = await append(server.messages, "s", user("a", event_time=at(now - 100)),
                          user("b"))
    # No event time on the newest message: its created_at.
    assert stored.session.last_event_at == stored.messages[1].created_at
    await check(stored.messages[1].created_at)
    # The newest by seq, not the latest time: a runtime may append an older event.
    lean = await server.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s", messages=[user("c", event_time=at(now - 200))],
        view=ms.APPEND_VIEW_LEAN))
    assert lean.session.last_event_at == at(now - 200)
    await check(at(now - 200))
    await server.messages.PopMessage(ms.PopMessageRequest(session_id="s"))
    await check(stored.messages[1].created_at)
    replaced = await server.messages.ReplaceMessages(ms.ReplaceMessagesRequest(
        session_id="s", after_seq=1, expected_last_seq=3,
        messages=[user("d", event_time=at(now + 50))]))
    assert replaced.session.last_event_at == at(now + 50)
    await check(at(now + 50))
    await server.messages.DeleteMessages(ms.DeleteMessagesRequest(session_id="s",
                                                                  up_to_seq=1))
    await check(at(now + 50))
    await server.sessions.ForkSession(ss.ForkSessionRequest(source_session_id="s",
                                                            new_session_id="f"))
    await check(at(now + 50), "f")
    await server.messages.ClearMessages(ms.ClearMessagesRequest(session_id="s"))
    await check(None)
    await check(at(now + 50), "f")
    assert await server.check_consistency() == []


async def test_watchers_see_last_event_at_on_appends_and_deletions(server: Any) -> None:
    now = server.clock.now_micros() // 1_000_000
    await create_session(server.sessions, "s")
    async with WatchRecorder(server.sessions, name="last_event_at") as recorder:
        await recorder.wait_created()
        await append(server.messages, "s", user("a", event_time=at(now - 10)))
        await append(server.messages, "s", user("b", event_time=at(now - 5)))
        deleted = await server.messages.DeleteMessages(ms.DeleteMessagesRequest(
            session_id="s", up_to_seq=2))
        await recorder.wait_covered(deleted.revision)
    seen = {e.type: e.session for e in recorder.stream.events if e.session.id == "s"}
    assert seen[event_pb2.EVENT_TYPE_MESSAGES_APPENDED].last_event_at == at(now - 5)
    assert not seen[event_pb2.EVENT_TYPE_MESSAGES_DELETED].HasField("last_event_at")
