"""The JSON the dashboard page reads, made from the API's protobuf messages.

Messages keep their proto field names (``json_format`` with
``preserving_proto_field_name``), so ``/api/`` answers read like the proto
docs; zero values are printed, 64-bit integers are JSON numbers (money in
micro-dollars stays below 2**53 for any real fleet) and enums are their full
names ("SESSION_STATUS_ACTIVE"). Two cuts keep a page light, both marked in
the payload: message content and reasoning longer than
``MAX_MESSAGE_TEXT_CHARS`` are cut (``content_truncated``), and raw content
blocks are reduced to their types. The whole message stays one ListMessages
call away.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from sessiond.errors import SessiondError
from sessiond.formatting import readable_enum_names
from sessiond.v1 import event_pb2, message_pb2

MAX_MESSAGE_TEXT_CHARS = 64 * 1024
"""The most characters of a message's content (and of its reasoning) sent to the page."""

JsonObject = dict[str, Any]


def message_dict(message: Message) -> JsonObject:
    """Any protobuf message as a JSON object with proto field names."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def chat_message_dict(message: message_pb2.Message) -> JsonObject:
    """A session message for display: long text cut, raw blocks reduced to their types."""
    light = message_pb2.Message()
    light.CopyFrom(message)
    truncated = False
    if len(light.content) > MAX_MESSAGE_TEXT_CHARS:
        light.content = light.content[:MAX_MESSAGE_TEXT_CHARS]
        truncated = True
    if len(light.reasoning) > MAX_MESSAGE_TEXT_CHARS:
        light.reasoning = light.reasoning[:MAX_MESSAGE_TEXT_CHARS]
        truncated = True
    block_types = [block.type for block in light.content_blocks]
    del light.content_blocks[:]
    payload = message_dict(light)
    payload["content_blocks"] = [{"type": kind} for kind in block_types]
    payload["content_truncated"] = truncated
    return payload


def event_dict(event: event_pb2.SessionEvent) -> JsonObject:
    """One watch event: what changed, the session after it, the messages it concerns."""
    return {
        "type": event_pb2.EventType.Name(event.type),
        "revision": event.revision,
        "time": event.time.ToJsonString() if event.HasField("time") else None,
        "session_id": event.session_id,
        "session": message_dict(event.session) if event.HasField("session") else None,
        "messages": [chat_message_dict(message) for message in event.messages],
        "messages_truncated": event.messages_truncated,
        "removed_count": event.removed_count,
    }


def error_dict(error: SessiondError) -> JsonObject:
    """A failed call as the page shows it: code, message, reason and bad fields."""
    return {
        "error": {
            "code": error.code.name,
            "message": readable_enum_names(error.message),
            "reason": error.reason,
            "field_violations": [
                {"field": field, "description": description}
                for field, description in error.field_violations
            ],
        }
    }


def dumps(payload: Any) -> str:
    """Compact JSON on one line (event-stream data must not contain newlines)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
