"""Error statuses bounded in bytes, so every gRPC client reads the error itself.

A status travels in the trailers, and a gRPC client drops trailers over its
metadata limit (grpc-core rejects some above 8 KiB and all above 16 KiB): an
unbounded status reached the caller as RESOURCE_EXHAUSTED "Stream removed"
instead of INVALID_ARGUMENT naming the field. These tests send the requests
that used to do that, over a channel with gRPC's default settings, and check
that the answer is the documented error, naming the first fields and saying
how many more there are, in trailers under the 8 KiB a client always accepts.
"""

from __future__ import annotations

import math
import re
from typing import Any

import grpc
import pytest
import sessiond
from google.protobuf import field_mask_pb2
from harness import RpcFailure, append, create_session, decode_failure, get_session, user
from sessiond.v1 import message_pb2 as mp
from sessiond.v1 import message_service_pb2 as ms
from sessiond.v1 import session_pb2 as sp
from sessiond.v1 import session_service_pb2 as ss

#: The trailers a client accepts whatever its settings (grpc-core's soft metadata limit).
CLIENT_SAFE_TRAILER_BYTES = 8 << 10
#: The bounds of a status as the proto header documents them.
LISTED_VIOLATIONS = 20
MESSAGE_BYTES = 512
FIELD_BYTES = 128
DESCRIPTION_BYTES = 256
OMITTED_FIELD = "\u2026"
OMITTED = re.compile(r"(\d+) more field violations? not listed")
IN_ALL = re.compile(r"\((\d+) field violations in all\)$")


async def bounded_failure(call: Any) -> RpcFailure:
    """The failure of ``call``, after checking that its status keeps the documented bounds."""
    try:
        response = await call
    except grpc.RpcError as err:
        trailers = err.trailing_metadata() or ()  # type: ignore[attr-defined]
        failure = decode_failure(err)
        # As sent: binary trailers in base64, the message (grpc-message)
        # percent-encoded, at worst three bytes for each.
        size = sum(len(key) + (base64_bytes(value) if key.endswith("-bin") else len(value))
                   for key, value in trailers) + 3 * len(failure.message.encode())
    else:
        raise AssertionError(f"expected the call to fail, it answered: {response!r}")
    assert failure.code != grpc.StatusCode.RESOURCE_EXHAUSTED, failure.describe()
    assert failure.has_rich_status, failure.describe()
    assert size < CLIENT_SAFE_TRAILER_BYTES, (size, failure.describe())
    assert len(failure.message.encode()) <= MESSAGE_BYTES
    assert len(failure.field_violations) <= LISTED_VIOLATIONS + 1
    for field, description in failure.field_violations:
        assert len(field.encode()) <= FIELD_BYTES, field
        assert len(description.encode()) <= DESCRIPTION_BYTES, description
    return failure


def base64_bytes(value: bytes) -> int:
    return 4 * math.ceil(len(value) / 3)


def omitted_count(failure: RpcFailure) -> int:
    """How many violations the status says it left out (0 when it lists them all)."""
    field, description = failure.field_violations[-1]
    if field != OMITTED_FIELD:
        return 0
    found = OMITTED.fullmatch(description)
    assert found, description
    return int(found.group(1))


def bad_message() -> mp.Message:
    """A message breaking several rules at once, some with long values."""
    return mp.Message(id=" x ", role=0, status=99, name="n" * 2000,
                      provider_response_id="p" * 2000, tool_call_id="\x01", metadata={"": "v"})


async def test_a_hundred_bad_messages_name_the_first_fields_and_count_the_rest(server):
    one = await bounded_failure(server.messages.AppendMessages(
        ms.AppendMessagesRequest(session_id="s1", messages=[bad_message()])))
    per_message = len(one.field_violations)
    assert per_message > 1 and omitted_count(one) == 0

    many = await bounded_failure(server.messages.AppendMessages(
        ms.AppendMessagesRequest(session_id="s1", messages=[bad_message()] * 100)))
    assert (many.code, many.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    listed = many.field_violations[:-1]
    assert listed == one.field_violations + listed[per_message:]
    assert listed[0][0] == "messages[0].id"
    assert len(listed) + omitted_count(many) == 100 * per_message
    found = IN_ALL.search(many.message)
    assert found and int(found.group(1)) == 100 * per_message, many.message
    assert many.message.startswith("messages[0].id: ")


async def test_three_hundred_bad_filter_values_answer_invalid_argument(server):
    bad = sp.SessionFilter(agents=[f"\x01{i}" for i in range(100)], models=["\x01"] * 100,
                           owner_ids=["\x01"] * 100)
    failure = await bounded_failure(server.sessions.ListSessions(
        ss.ListSessionsRequest(filter=bad)))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    assert failure.fields[:LISTED_VIOLATIONS] == [f"filter.agents[{i}]"
                                                  for i in range(LISTED_VIOLATIONS)]
    assert omitted_count(failure) == 300 - LISTED_VIOLATIONS


@pytest.mark.parametrize("path", ["p" * 100_000, "\u00e9" * 50_000])
async def test_a_huge_update_mask_path_is_named_and_quoted_cut(server, path):
    await create_session(server.sessions, "s1")
    await append(server.messages, "s1", user("hi"))
    mask = field_mask_pb2.FieldMask(paths=[path])
    calls = [
        server.sessions.UpdateSession(ss.UpdateSessionRequest(
            session=sp.Session(id="s1"), update_mask=mask)),
        server.messages.UpdateLastMessage(ms.UpdateLastMessageRequest(
            session_id="s1", update_mask=mask)),
    ]
    for call in calls:
        failure = await bounded_failure(call)
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.fields == ["update_mask.paths[0]"]
        (_, description), = failure.field_violations
        quoted = description.split(" cannot be updated")[0]
        assert quoted.endswith("\u2026'") and path.startswith(quoted[1:-2])
        assert len(quoted[1:-1].encode()) <= 64
        assert "allowed:" in description


async def test_replace_messages_refuses_an_etag_longer_than_any_issued(server):
    await create_session(server.sessions, "s1")
    failure = await bounded_failure(server.messages.ReplaceMessages(ms.ReplaceMessagesRequest(
        session_id="s1", expected_last_seq=0, etag="x" * 100_000,
        messages=[user("hi")])))
    assert (failure.code, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["etag"])
    assert "the limit is 64" in failure.field_violations[0][1]


async def test_a_stale_etag_of_the_longest_allowed_size_answers_aborted(server):
    await create_session(server.sessions, "s1")
    stale = "9" * 64
    failure = await bounded_failure(server.messages.ReplaceMessages(ms.ReplaceMessagesRequest(
        session_id="s1", expected_last_seq=0, etag=stale, messages=[user("hi")])))
    assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert stale in failure.message
    assert (await get_session(server.sessions, "s1")).message_count == 0


@pytest.mark.parametrize(("letter", "listed_count"), [("k", 20), ("\u00e9", 20), ("\x01", 16)])
async def test_long_metadata_keys_are_quoted_cut_in_the_field_path(server, letter, listed_count):
    # Quoted control characters take four bytes each, so each field path is cut at
    # 128 bytes and 20 violations would pass the 3 KiB budget: fewer are listed.
    keys = {f"{i:02d}" + letter * 10_000: "v" for i in range(30)}
    failure = await bounded_failure(server.messages.AppendMessages(ms.AppendMessagesRequest(
        session_id="s1", messages=[mp.Message(role=mp.ROLE_USER, content="x", metadata=keys)])))
    listed = failure.field_violations[:-1]
    assert all(f.startswith("messages[0].metadata['") and "\u2026" in f for f, _ in listed)
    assert len(listed) == listed_count
    assert len(listed) + omitted_count(failure) == 30


async def test_the_python_client_raises_the_typed_error_with_the_count(server):
    async with sessiond.AsyncClient(server.address) as client:
        with pytest.raises(sessiond.InvalidArgument) as caught:
            await client.append_messages(session_id="s1", messages=[bad_message()] * 100)
    error = caught.value
    assert error.reason == "BAD_REQUEST"
    assert error.field_violations[0][0] == "messages[0].id"
    assert error.field_violations[-1][0] == OMITTED_FIELD
    assert OMITTED.fullmatch(error.field_violations[-1][1])
