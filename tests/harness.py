"""What the black-box tests share besides fixtures: a fake clock, rich-error decoding, time
conversion and the counters-equal-recounts validator.

The tests only speak gRPC to a real server; nothing here reaches into the store. The clock is
injected into the server (``ServerConfig.clock``), so a test moves time with
``clock.advance(seconds)`` and never sleeps to see an effect such as a session turning
ABANDONED.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Awaitable, Iterable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2

ERROR_DOMAIN = "sessiond.v1"
# Channel options for reaching a server restarted on the same port: with
# subchannels of its own, a new channel cannot inherit (from grpc's
# process-wide pool) the killed server's connection still in back-off, which
# fails calls at once with "connection refused" while the new server serves.
OWN_SUBCHANNELS = [("grpc.use_local_subchannel_pool", 1)]

# 2025-06-15T00:00:00Z: a fixed, round start so stored times are easy to read in failures.
FAKE_EPOCH_MICROS = 1_749_945_600_000_000


class FakeClock:
    """A controllable clock: ``now_micros`` is what the server reads, ``advance`` moves it.

    Time only moves when a test says so, so two writes without an ``advance`` between them
    carry the same timestamp. The server may read the clock from its writer thread, hence
    the lock.
    """

    def __init__(self, start_micros: int = FAKE_EPOCH_MICROS) -> None:
        self._now = start_micros
        self._lock = threading.Lock()

    def now_micros(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> int:
        """Move the clock forward and return the new time in epoch microseconds."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += round(seconds * 1_000_000)
            return self._now

    def now_timestamp(self) -> timestamp_pb2.Timestamp:
        return timestamp(self.now_micros())


def timestamp(epoch_micros: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for integer epoch microseconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(epoch_micros)
    return ts


def micros(ts: timestamp_pb2.Timestamp) -> int:
    """Integer epoch microseconds of a protobuf Timestamp."""
    return ts.ToMicroseconds()


@dataclasses.dataclass(frozen=True)
class RpcFailure:
    """A failed call as the contract describes it: code, ErrorInfo and BadRequest."""

    code: grpc.StatusCode
    message: str
    reason: str | None
    domain: str | None
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]
    has_rich_status: bool

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.field_violations]

    def describe(self) -> str:
        return (
            f"{self.code.name} reason={self.reason} fields={self.fields} message={self.message!r}"
        )


def decode_failure(err: grpc.RpcError) -> RpcFailure:
    """Decode the google.rpc.Status carried in the trailers of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    reason = domain = None
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend((v.field, v.description) for v in bad.field_violations)
    return RpcFailure(
        code=err.code(),  # type: ignore[attr-defined]
        message=err.details() or "",  # type: ignore[attr-defined]
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        has_rich_status=status is not None,
    )


async def rpc_failure(call: Awaitable[Any]) -> RpcFailure:
    """Await a call that must fail and return its decoded failure."""
    try:
        response = await call
    except grpc.RpcError as err:
        return decode_failure(err)
    raise AssertionError(f"expected the call to fail, it answered: {response!r}")


async def expect_failure(
    call: Awaitable[Any],
    code: grpc.StatusCode,
    reason: str,
    *,
    field: str | None = None,
) -> RpcFailure:
    """Await a call that must fail with this code, ErrorInfo reason and (optionally) field."""
    failure = await rpc_failure(call)
    assert failure.code == code, failure.describe()
    assert failure.has_rich_status, f"no google.rpc.Status in trailers: {failure.describe()}"
    assert failure.domain == ERROR_DOMAIN, failure.describe()
    assert failure.reason == reason, failure.describe()
    if field is not None:
        assert field in failure.fields, failure.describe()
    return failure


async def expect_bad_request(call: Awaitable[Any], field: str) -> RpcFailure:
    """INVALID_ARGUMENT with reason BAD_REQUEST and a field violation naming ``field``."""
    return await expect_failure(
        call, grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST", field=field
    )


async def list_all_messages(
    messages: Any, session_id: str, *, page_size: int = 1000
) -> list[message_pb2.Message]:
    """Every stored message of a session, oldest first, by walking the pages."""
    found: list[message_pb2.Message] = []
    token = ""
    while True:
        page = await messages.ListMessages(
            message_service_pb2.ListMessagesRequest(
                session_id=session_id, page_size=page_size, page_token=token
            )
        )
        found.extend(page.messages)
        token = page.next_page_token
        if not token:
            return found


@dataclasses.dataclass(frozen=True)
class MessageCounters:
    message_count: int
    turn_count: int
    tool_call_count: int


def recount(stored: Iterable[message_pb2.Message]) -> MessageCounters:
    """The message counters the contract defines, recounted from the messages themselves.

    last_seq is not among them: it is the highest number ever assigned, which pops and
    clears do not lower, so it cannot be recounted from what is stored.
    """
    items = list(stored)
    return MessageCounters(
        message_count=len(items),
        turn_count=sum(1 for m in items if m.role == message_pb2.ROLE_ASSISTANT and m.content),
        tool_call_count=sum(len(m.tool_calls) for m in items),
    )


def counters_of(session: session_pb2.Session) -> MessageCounters:
    return MessageCounters(
        message_count=session.message_count,
        turn_count=session.turn_count,
        tool_call_count=session.tool_call_count,
    )


async def assert_counters_match_recount(sessions: Any, messages: Any, session_id: str) -> None:
    """The guarantee "counters equal recounts" for one session, checked through the API."""
    stored = await list_all_messages(messages, session_id)
    seqs = [m.seq for m in stored]
    assert seqs == sorted(set(seqs)), f"sequence numbers not strictly increasing: {seqs}"
    got = await sessions.GetSession(session_service_pb2.GetSessionRequest(session_id=session_id))
    assert counters_of(got.session) == recount(stored)
    assert got.session.last_seq >= (seqs[-1] if seqs else 0)
    # last_event_at is derived the same way: the newest message's event time, else its
    # created_at; unset with no messages.
    newest = stored[-1] if stored else None
    expected = (None if newest is None else
                newest.event_time if newest.HasField("event_time") else newest.created_at)
    if expected is None:
        assert not got.session.HasField("last_event_at")
    else:
        assert got.session.last_event_at == expected


async def create_session(
    sessions: Any, session_id: str = "", **fields: Any
) -> session_pb2.Session:
    """Create a session through the API and return it as stored."""
    answer = await sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(id=session_id, **fields)
        )
    )
    assert answer.created
    return answer.session


async def get_session(sessions: Any, session_id: str) -> session_pb2.Session:
    answer = await sessions.GetSession(
        session_service_pb2.GetSessionRequest(session_id=session_id)
    )
    return answer.session


def user(content: str = "hello", **fields: Any) -> message_pb2.Message:
    return message_pb2.Message(role=message_pb2.ROLE_USER, content=content, **fields)


def assistant(content: str = "hi", *, tool_calls: int = 0, **fields: Any) -> message_pb2.Message:
    calls = [
        message_pb2.ToolCall(id=f"call-{i}", name="lookup", arguments_json="{}")
        for i in range(tool_calls)
    ]
    return message_pb2.Message(
        role=message_pb2.ROLE_ASSISTANT, content=content, tool_calls=calls, **fields
    )


def tool(content: str = "42", call_id: str = "call-0", **fields: Any) -> message_pb2.Message:
    return message_pb2.Message(
        role=message_pb2.ROLE_TOOL, content=content, tool_call_id=call_id, **fields
    )


def system(content: str = "be brief", **fields: Any) -> message_pb2.Message:
    return message_pb2.Message(role=message_pb2.ROLE_SYSTEM, content=content, **fields)


async def append(
    messages: Any, session_id: str, *items: message_pb2.Message, **request_fields: Any
) -> message_service_pb2.AppendMessagesResponse:
    return await messages.AppendMessages(
        message_service_pb2.AppendMessagesRequest(
            session_id=session_id, messages=list(items), **request_fields
        )
    )
