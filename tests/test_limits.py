"""Server limits, black box: a request over a limit is INVALID_ARGUMENT naming the field, and
nothing of it is stored. Most tests run a server with small limits (``Limits`` is
injectable); a few check the documented defaults.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from harness import (
    append,
    assistant,
    create_session,
    decode_failure,
    expect_bad_request,
    expect_failure,
    get_session,
    list_all_messages,
    user,
)
from sessiond.v1 import event_pb2 as ev
from sessiond.v1 import message_pb2 as mp
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss
from sessiond.v1 import stats_service_pb2 as sts
from watch_validator import watch_error

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT

SMALL = {
    "max_messages_per_append": 3,
    "max_message_bytes": 1024,
    "max_labels": 4,
    "max_label_key_bytes": 8,
    "max_label_value_bytes": 16,
    "max_id_bytes": 20,
    "max_text_field_bytes": 64,
}


@pytest.fixture
async def small(make_server):
    return await make_server(limits=SMALL)


async def nothing_stored(server, session_id: str) -> None:
    assert await list_all_messages(server.messages, session_id) == []
    s = await get_session(server.sessions, session_id)
    assert (s.message_count, s.last_seq) == (0, 0)  # no number was taken either
    assert await server.check_consistency() == []


# Messages ----------------------------------------------------------------------------------


async def test_more_messages_than_the_append_limit_is_invalid_argument(small):
    await create_session(small.sessions, "s1")
    await expect_bad_request(
        append(small.messages, "s1", *[user(f"m{i}") for i in range(4)]), "messages"
    )
    await nothing_stored(small, "s1")


async def test_exactly_the_append_limit_is_accepted(small):
    await create_session(small.sessions, "s1")
    answer = await append(small.messages, "s1", *[user(f"m{i}") for i in range(3)])
    assert len(answer.messages) == 3


async def test_a_message_over_the_size_limit_is_named_by_index_and_nothing_is_stored(small):
    await create_session(small.sessions, "s1")
    await expect_bad_request(
        append(small.messages, "s1", user("ok"), user("ok"), user("x" * 1025)),
        "messages[2].content",
    )
    await nothing_stored(small, "s1")


async def test_content_reasoning_and_blocks_count_together_towards_the_size_limit(small):
    await create_session(small.sessions, "s1")
    together = assistant(
        "c" * 400,
        reasoning="r" * 400,
        content_blocks=[mp.ContentBlock(type="text", json="j" * 300)],
    )
    failure = await expect_failure(
        append(small.messages, "s1", together),
        INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert any(f.startswith("messages[0]") for f in failure.fields), failure.describe()
    await nothing_stored(small, "s1")


async def test_a_message_exactly_at_the_size_limit_is_accepted(small):
    await create_session(small.sessions, "s1")
    answer = await append(small.messages, "s1", user("x" * 1024))
    assert len(answer.messages[0].content) == 1024


async def test_a_message_id_over_the_id_limit_is_invalid_argument(small):
    await create_session(small.sessions, "s1")
    await expect_bad_request(
        append(small.messages, "s1", user("a", id="i" * 21)), "messages[0].id"
    )
    await nothing_stored(small, "s1")


async def test_too_much_message_metadata_is_invalid_argument(small):
    await create_session(small.sessions, "s1")
    failure = await expect_failure(
        append(small.messages, "s1", user("a", metadata={f"k{i}": "v" for i in range(5)})),
        INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert any(f.startswith("messages[0].metadata") for f in failure.fields), failure.describe()
    await nothing_stored(small, "s1")


async def test_an_update_of_the_last_message_over_the_size_limit_changes_nothing(small):
    await create_session(small.sessions, "s1")
    await append(small.messages, "s1", assistant("short"))
    failure = await expect_failure(
        small.messages.UpdateLastMessage(
            ms.UpdateLastMessageRequest(session_id="s1", message=mp.Message(content="x" * 1025))
        ),
        INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert any(f.startswith("message") for f in failure.fields), failure.describe()
    stored = await list_all_messages(small.messages, "s1")
    assert [m.content for m in stored] == ["short"]


# Sessions ----------------------------------------------------------------------------------


async def test_too_many_labels_on_create_is_invalid_argument_and_creates_nothing(small):
    labels = {f"k{i}": "v" for i in range(5)}
    await expect_bad_request(
        small.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="s1", labels=labels))
        ),
        "session.labels",
    )
    listed = await small.sessions.ListSessions(ss.ListSessionsRequest())
    assert listed.total_size == 0


async def test_exactly_the_label_limit_is_accepted(small):
    labels = {f"k{i}": "v" * 16 for i in range(4)}
    s = await create_session(small.sessions, "s1", labels=labels)
    assert dict(s.labels) == labels


@pytest.mark.parametrize(
    "labels", [{"k" * 9: "v"}, {"k": "v" * 17}, {"": "v"}], ids=["long-key", "long-value",
                                                                  "empty-key"]
)
async def test_a_label_over_its_size_limits_is_invalid_argument(small, labels):
    failure = await expect_failure(
        small.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="s1", labels=labels))
        ),
        INVALID_ARGUMENT,
        "BAD_REQUEST",
    )
    assert any(f.startswith("session.labels") for f in failure.fields), failure.describe()


async def test_too_many_labels_on_update_is_invalid_argument_and_changes_nothing(small):
    await create_session(small.sessions, "s1", labels={"a": "1"})
    await expect_bad_request(
        small.sessions.UpdateSession(
            ss.UpdateSessionRequest(
                session=sp.Session(id="s1", labels={f"k{i}": "v" for i in range(5)}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            )
        ),
        "session.labels",
    )
    assert dict((await get_session(small.sessions, "s1")).labels) == {"a": "1"}


async def test_a_session_id_over_the_id_limit_is_invalid_argument(small):
    await expect_bad_request(
        small.sessions.CreateSession(ss.CreateSessionRequest(session=sp.Session(id="s" * 21))),
        "session.id",
    )


@pytest.mark.parametrize("field", ["goal"])
async def test_a_text_field_over_the_text_limit_is_invalid_argument(small, field):
    await expect_bad_request(
        small.sessions.CreateSession(
            ss.CreateSessionRequest(session=sp.Session(id="s1", **{field: "t" * 65}))
        ),
        f"session.{field}",
    )


async def test_too_many_labels_in_a_touch_that_creates_is_invalid_argument(small):
    await expect_bad_request(
        small.sessions.TouchSession(
            ss.TouchSessionRequest(
                session=sp.Session(id="s1", labels={f"k{i}": "v" for i in range(5)})
            )
        ),
        "session.labels",
    )
    listed = await small.sessions.ListSessions(ss.ListSessionsRequest())
    assert listed.total_size == 0


async def test_an_end_reason_over_4_kib_is_invalid_argument(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        server.sessions.EndSession(
            ss.EndSessionRequest(
                session_id="s1", status=sp.SESSION_STATUS_COMPLETED, reason="r" * 4097
            )
        ),
        "reason",
    )
    assert (await get_session(server.sessions, "s1")).status == sp.SESSION_STATUS_ACTIVE


# Documented defaults -----------------------------------------------------------------------


async def test_the_default_append_limit_is_100_messages(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        append(server.messages, "s1", *[user(f"m{i}") for i in range(101)]), "messages"
    )
    answer = await append(server.messages, "s1", *[user(f"m{i}") for i in range(100)])
    assert len(answer.messages) == 100


async def test_the_default_message_size_limit_is_1_mib(server):
    await create_session(server.sessions, "s1")
    await expect_bad_request(
        append(server.messages, "s1", user("x" * ((1 << 20) + 1))), "messages[0].content"
    )
    answer = await append(server.messages, "s1", user("x" * (1 << 20)))
    assert answer.messages[0].seq == 1


async def test_the_default_label_limit_is_64(server):
    await expect_bad_request(
        server.sessions.CreateSession(
            ss.CreateSessionRequest(
                session=sp.Session(id="s1", labels={f"k{i}": "v" for i in range(65)})
            )
        ),
        "session.labels",
    )
    s = await create_session(server.sessions, "s1", labels={f"k{i}": "v" for i in range(64)})
    assert len(s.labels) == 64


# Filters: every repeated field is counted before any work ---------------------------------

THOUSAND_CHANNELS = [f"discord.c{i}" for i in range(1000)]
FILTER_OVER_THE_LIMIT = {
    "channels": THOUSAND_CHANNELS,
    "statuses": [sp.SESSION_STATUS_ACTIVE] * 1000,
    "kinds": [sp.SESSION_KIND_INTERACTIVE] * 1000,
    "agents": [f"a{i}" for i in range(101)],
    "runtime_instances": [f"r{i}" for i in range(101)],
    "labels": {f"k{i}": "v" for i in range(101)},
}


def names_the_limit(failure: Any, field: str, limit: int) -> bool:
    return any(f == field and f"the limit is {limit}" in d for f, d in failure.field_violations)


@pytest.mark.parametrize("field", sorted(FILTER_OVER_THE_LIMIT))
async def test_a_list_filter_over_the_count_bound_is_invalid_argument_naming_field_and_limit(
        server, field):
    session_filter = sp.SessionFilter(**{field: FILTER_OVER_THE_LIMIT[field]})
    failure = await expect_bad_request(
        server.sessions.ListSessions(ss.ListSessionsRequest(filter=session_filter)),
        f"filter.{field}")
    assert names_the_limit(failure, f"filter.{field}", 100), failure.describe()
    # One violation for the whole list, not one per value.
    assert failure.fields == [f"filter.{field}"], failure.describe()


async def test_a_thousand_channels_are_invalid_argument_not_a_storage_error(server):
    """They used to reach SQLite and come back UNAVAILABLE (expression tree too large)."""
    for call in (
        server.sessions.ListSessions(ss.ListSessionsRequest(
            filter=sp.SessionFilter(channels=THOUSAND_CHANNELS))),
        server.stats.GetStats(sts.GetStatsRequest(
            filter=sp.SessionFilter(channels=THOUSAND_CHANNELS))),
    ):
        failure = await expect_bad_request(call, "filter.channels")
        assert names_the_limit(failure, "filter.channels", 100), failure.describe()


async def test_exactly_the_filter_bound_is_accepted(server):
    await create_session(server.sessions, "s1", channel="discord.c7")
    answer = await server.sessions.ListSessions(ss.ListSessionsRequest(
        filter=sp.SessionFilter(channels=THOUSAND_CHANNELS[:100],
                                statuses=[sp.SESSION_STATUS_ACTIVE] * 100)))
    assert [s.id for s in answer.sessions] == ["s1"]


@pytest.mark.parametrize(("field", "values", "limit"), [
    ("channels", THOUSAND_CHANNELS, 100),
    ("statuses", [sp.SESSION_STATUS_ACTIVE] * 1000, 100),
    ("event_types", [ev.EVENT_TYPE_SESSION_CREATED] * 100_000, 100),
    ("session_ids", [f"s{i}" for i in range(101)], 100),
    ("owner_ids", [f"o{i}" for i in range(101)], 100),
    ("agents", [f"a{i}" for i in range(101)], 100),
    ("labels", {f"k{i}": "v" for i in range(65)}, 64),
])
async def test_a_watch_filter_over_the_count_bound_is_invalid_argument(server, field, values,
                                                                       limit):
    error, responses = await watch_error(server.sessions,
                                         filter=ss.WatchFilter(**{field: values}))
    failure = decode_failure(error)
    assert (failure.code, failure.reason) == (INVALID_ARGUMENT, "BAD_REQUEST")
    assert failure.fields == [f"filter.{field}"], failure.describe()
    assert any(f"the limit is {limit}" in d for _, d in failure.field_violations)
    assert responses == []  # refused before the watch was created


async def test_purge_with_too_many_statuses_is_invalid_argument_and_purges_nothing(server):
    await create_session(server.sessions, "s1")
    failure = await expect_bad_request(
        server.sessions.PurgeSessions(ss.PurgeSessionsRequest(
            keep_newest=1, statuses=[sp.SESSION_STATUS_ACTIVE] * 1000)), "statuses")
    assert names_the_limit(failure, "statuses", 100), failure.describe()
    assert (await get_session(server.sessions, "s1")).id == "s1"
