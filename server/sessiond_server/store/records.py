"""Conversions between SQLite rows and ``sessiond.v1`` records.

Rows are plain tuples in the column order of ``SESSION_COLUMNS`` (cheaper
than ``sqlite3.Row``); each converter builds the protobuf record in one go.
The effective status (ABANDONED) is computed here, at read time, from the
caller's clock and threshold: nothing is written when a session goes idle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sessiond.v1 import message_pb2, session_pb2

from .errors import FailedPrecondition

SESSION_FIELDS = (
    "pk", "tenant", "id", "kind", "channel", "room_id", "sender_id", "agent", "model",
    "display_name", "goal", "owner_id", "dataset_id", "labels", "runtime_instance",
    "parent_id", "fork_seq", "status", "end_reason", "runtime_state", "current_turn_id",
    "turn_started_at", "started_at", "last_activity_at", "ended_at", "updated_at",
    "message_count", "turn_count", "tool_call_count", "last_seq", "prompt_tokens",
    "completion_tokens", "reasoning_tokens", "cache_read_tokens", "cache_write_tokens",
    "cost_micros", "request_count", "error_count", "total_tokens", "budget_micros", "revision",
    "state", "last_event_at",
)
SESSION_COLUMNS = ", ".join(f"s.{name}" for name in SESSION_FIELDS)
COL = {name: i for i, name in enumerate(SESSION_FIELDS)}

USAGE_FIELDS = (
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_micros", "request_count", "error_count", "total_tokens",
)

MESSAGE_FIELDS = ("rowid", "session_pk", "seq", "message_id", "role", "content",
                  "is_turn", "tool_calls", "created_at", "updated_at", "body")
MESSAGE_COLUMNS = ", ".join(f"m.{name}" for name in MESSAGE_FIELDS)


def without_orphaned_tool_results(
        messages: Sequence[message_pb2.Message]) -> list[message_pb2.Message]:
    """A cut window of messages (oldest first), started late enough that no tool result in
    it has lost its call: a tool message whose tool_call_id no earlier message of the window
    calls (or a leading tool message without an id) moves the start past it."""
    start = 0
    while True:
        calls: set[str] = set()
        for i in range(start, len(messages)):
            message = messages[i]
            if message.role == message_pb2.ROLE_TOOL and (
                    message.tool_call_id not in calls if message.tool_call_id else i == start):
                start = i + 1
                break
            calls.update(call.id for call in message.tool_calls)
        else:
            return list(messages[start:])


def message_bytes(message: message_pb2.Message) -> int:
    """The bytes a message's size limit counts: content, reasoning, blocks and tool calls."""
    return (len(message.content.encode()) + len(message.reasoning.encode())
            + sum(b.ByteSize() for b in message.content_blocks)
            + sum(t.ByteSize() for t in message.tool_calls))

ACTIVE = session_pb2.SESSION_STATUS_ACTIVE
ABANDONED = session_pb2.SESSION_STATUS_ABANDONED
UNKNOWN = session_pb2.SESSION_STATUS_UNKNOWN
TERMINAL_STATUSES = frozenset({
    session_pb2.SESSION_STATUS_COMPLETED,
    session_pb2.SESSION_STATUS_FAILED,
    session_pb2.SESSION_STATUS_CANCELLED,
})


def timestamp(micros: int) -> Timestamp | None:
    """A Timestamp for a stored time; None for 0 ("not set")."""
    if not micros:
        return None
    ts = Timestamp()
    ts.FromMicroseconds(micros)
    return ts


def micros_of(ts: Timestamp) -> int:
    return ts.ToMicroseconds()


def effective_status(status: int, last_activity_at: int, abandoned_before: int) -> int:
    """ACTIVE sessions idle since before ``abandoned_before`` read as ABANDONED."""
    if status == ACTIVE and last_activity_at < abandoned_before:
        return ABANDONED
    return status


INT64_MAX = (1 << 63) - 1


def int64(value: Any) -> int:
    """An aggregate for an int64 field: a sum past the range saturates at its top."""
    return min(int(value), INT64_MAX)


def usage_from(values: Sequence[Any]) -> session_pb2.Usage:
    """A Usage from the nine counters in USAGE_FIELDS order."""
    return session_pb2.Usage(
        prompt_tokens=values[0], completion_tokens=values[1], reasoning_tokens=values[2],
        cache_read_tokens=values[3], cache_write_tokens=values[4], cost_micros=values[5],
        request_count=values[6], error_count=values[7], total_tokens=values[8],
    )


def session_from_row(row: Sequence[Any], abandoned_before: int) -> session_pb2.Session:
    u = COL["prompt_tokens"]
    return session_pb2.Session(
        id=row[2], tenant=row[1], kind=row[3], channel=row[4], room_id=row[5],
        sender_id=row[6], agent=row[7], model=row[8], display_name=row[9], goal=row[10],
        owner_id=row[11], dataset_id=row[12], labels=json.loads(row[13]),
        runtime_instance=row[14], parent_id=row[15], fork_seq=row[16],
        status=effective_status(row[17], row[23], abandoned_before),  # type: ignore[arg-type]
        end_reason=row[18], runtime_state=row[19], current_turn_id=row[20],
        turn_started_at=timestamp(row[21]), started_at=timestamp(row[22]),
        last_activity_at=timestamp(row[23]), ended_at=timestamp(row[24]),
        updated_at=timestamp(row[25]), message_count=row[26], turn_count=row[27],
        tool_call_count=row[28], last_seq=row[29], usage=usage_from(row[u:u + 9]),
        budget_micros=row[39], revision=row[40], etag=str(row[40]), state_json=row[41],
        last_event_at=timestamp(row[42]),
    )


def message_from_row(row: Sequence[Any], session_id: str) -> message_pb2.Message:
    message = message_pb2.Message.FromString(row[10])
    message.session_id = session_id
    message.seq = row[2]
    if row[3] is not None:
        message.id = row[3]
    message.role = row[4]
    message.content = row[5]
    message.created_at.FromMicroseconds(row[8])
    message.updated_at.FromMicroseconds(row[9])
    return message


def message_body(message: message_pb2.Message) -> bytes:
    """The fields kept in ``messages.body``: all but the columns and output fields."""
    body = message_pb2.Message()
    body.CopyFrom(message)
    for name in ("session_id", "seq", "id", "role", "content", "created_at", "updated_at"):
        body.ClearField(name)
    if body.status == message_pb2.MESSAGE_STATUS_UNSPECIFIED:
        body.status = message_pb2.MESSAGE_STATUS_COMPLETE
    return body.SerializeToString(deterministic=True)


def is_turn(message: message_pb2.Message) -> bool:
    """A turn is counted for each assistant message with content."""
    return message.role == message_pb2.ROLE_ASSISTANT and bool(message.content)


def labels_json(labels: Any) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


# Shared by every backend: what a write returns and what its event carries.

# Fields compared to decide whether a repeated CreateSession is identical.
CREATE_FIELDS = ("kind", "channel", "room_id", "sender_id", "agent", "model", "display_name",
                 "goal", "owner_id", "dataset_id", "runtime_instance", "budget_micros")

# Bounds on what a watch event carries for message events (event.proto states
# them, and the worst case of a whole event under the default limits).
EVENT_MAX_MESSAGES = 16
EVENT_MAX_TEXT = 4096
EVENT_MAX_TOOL_CALLS = 16
EVENT_MAX_TOOL_ARGUMENTS = 512
EVENT_MAX_TOOL_ID = 256


def same_content(existing: session_pb2.Session, wanted: session_pb2.Session) -> bool:
    """Whether a repeated create asks for what is stored (idempotent retry)."""
    for name in CREATE_FIELDS:
        a, b = getattr(existing, name), getattr(wanted, name)
        if name == "kind":
            b = b or session_pb2.SESSION_KIND_INTERACTIVE
        if a != b:
            return False
    if dict(existing.labels) != dict(wanted.labels):
        return False
    if existing.state_json != (wanted.state_json or "{}"):
        return False
    return not (wanted.HasField("started_at") and wanted.started_at != existing.started_at)


def require_writable(row: Sequence[Any]) -> None:
    """Message and runtime writes are refused on a session in a terminal status."""
    if row[COL["status"]] in TERMINAL_STATUSES:
        raise FailedPrecondition(f"session {row[2]!r} has ended", reason="SESSION_ENDED")


def event_messages(messages: Sequence[message_pb2.Message], in_place: bool = False
                   ) -> tuple[list[message_pb2.Message], bool]:
    """Messages as a watch event carries them: bounded and cut short (cut copies, or
    with ``in_place`` the messages themselves, when the caller keeps no other use)."""
    truncated = len(messages) > EVENT_MAX_MESSAGES
    out: list[message_pb2.Message] = []
    for message in messages[-EVENT_MAX_MESSAGES:]:
        if in_place:
            copy = message
        else:
            copy = message_pb2.Message()
            copy.CopyFrom(message)
        for name in ("content", "reasoning"):
            truncated |= _cut(copy, name, EVENT_MAX_TEXT)
        if len(copy.tool_calls) > EVENT_MAX_TOOL_CALLS:
            del copy.tool_calls[EVENT_MAX_TOOL_CALLS:]
            truncated = True
        for call in copy.tool_calls:
            truncated |= _cut(call, "id", EVENT_MAX_TOOL_ID)
            truncated |= _cut(call, "name", EVENT_MAX_TOOL_ID)
            truncated |= _cut(call, "arguments_json", EVENT_MAX_TOOL_ARGUMENTS)
        if copy.content_blocks and copy.ByteSize() > 2 * EVENT_MAX_TEXT:
            copy.ClearField("content_blocks")
            truncated = True
        out.append(copy)
    return out, truncated


def _cut(holder: Any, name: str, max_bytes: int) -> bool:
    """Cut a text field to ``max_bytes`` (a character split in two is dropped); True if cut."""
    encoded = getattr(holder, name).encode()
    if len(encoded) <= max_bytes:
        return False
    setattr(holder, name, encoded[:max_bytes].decode("utf-8", "ignore"))
    return True


def stored_message(message: message_pb2.Message, session_id: str, seq: int,
                   now: int) -> message_pb2.Message:
    """The message as a read would return it, built without reading it back."""
    stored = message_pb2.Message()
    stored.CopyFrom(message)
    stored.session_id = session_id
    stored.seq = seq
    if stored.status == message_pb2.MESSAGE_STATUS_UNSPECIFIED:
        stored.status = message_pb2.MESSAGE_STATUS_COMPLETE
    stored.created_at.FromMicroseconds(now)
    stored.updated_at.FromMicroseconds(now)
    return stored
