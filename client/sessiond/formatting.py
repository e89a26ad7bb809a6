"""How the ``sessiond`` command shows sessions, messages, stats and events.

Two views of the same messages: aligned tables and ``key: value`` blocks
for people (times in UTC as ``2025-06-15 12:00:00Z``, money from integer
micro-dollars as ``$0.001234``, enums as lower-case words), and JSON for
programs, written by ``google.protobuf.json_format`` with the proto field
names, one object per line for streams. Nothing here talks to the server.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sessiond.v1 import event_pb2, message_pb2, session_pb2, session_service_pb2, stats_service_pb2

CONTENT_WIDTH = 80
"""The most characters of message content a table row or event line shows."""


def to_json(message: Message) -> str:
    """One message as one line of JSON, with the proto field names."""
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True),
        ensure_ascii=False,
    )


def enum_word(enum: EnumDescriptor, value: int) -> str:
    """An enum value without its type prefix, lower-case ("active", "running");
    "-" for the zero value, the number for a value this client does not know."""
    known = enum.values_by_number.get(value)
    if known is None:
        return str(value)
    if known.name.endswith("_UNSPECIFIED"):
        return "-"
    return known.name.removeprefix(_enum_prefix(enum)).lower()


def enum_words(enum: EnumDescriptor) -> dict[str, str]:
    """The words ``enum_word`` prints, mapped to the full value names."""
    prefix = _enum_prefix(enum)
    return {
        value.name.removeprefix(prefix).lower(): value.name
        for value in enum.values
        if not value.name.endswith("_UNSPECIFIED")
    }


def readable_enum_names(text: str) -> str:
    """``text`` with every enum value name of the API written as its word:
    "session is SESSION_STATUS_COMPLETED" reads "session is completed"."""
    return _ENUM_NAME.sub(lambda match: _ENUM_NAME_WORDS.get(match[0], match[0]), text)


def _enum_prefix(enum: EnumDescriptor) -> str:
    """The prefix of an enum's value names, "SESSION_STATUS_" for example."""
    unspecified = next(
        (value.name for value in enum.values if value.name.endswith("_UNSPECIFIED")), ""
    )
    return unspecified.removesuffix("UNSPECIFIED")


def format_money(micros: int) -> str:
    """Integer micro-dollars as dollars with all six decimals: $0.001234."""
    sign = "-" if micros < 0 else ""
    dollars, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}${dollars:,}.{fraction:06d}"


def format_time(timestamp: Timestamp, *, is_set: bool = True) -> str:
    """A timestamp in UTC to the second, or "-" when the field is unset."""
    if not is_set:
        return "-"
    moment = timestamp.ToDatetime(tzinfo=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_field_time(message: Message, field: str) -> str:
    """The timestamp field ``field`` of ``message``, "-" when unset."""
    value = getattr(message, field)
    assert isinstance(value, Timestamp)
    return format_time(value, is_set=message.HasField(field))


def format_duration(seconds: float) -> str:
    """Seconds as "1h02m03s", "4m05s" or "6.5s"."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def format_count(value: int) -> str:
    """An integer with thousands separators."""
    return f"{value:,}"


def one_line(text: str, width: int = CONTENT_WIDTH) -> str:
    """Text on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()
) -> str:
    """Rows under headers in aligned columns; columns in ``right`` align right."""
    materialised = [list(row) for row in rows]
    widths = [len(header) for header in headers]
    for row in materialised:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    right_columns = set(right)

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[index]) if index in right_columns else cell.ljust(widths[index])
            for index, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in materialised)])


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """``key: value`` lines with the values aligned."""
    materialised = list(pairs)
    width = max((len(key) for key, _ in materialised), default=0)
    return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in materialised)


def session_table(sessions: Iterable[session_pb2.Session]) -> str:
    """Sessions, one per row, newest activity as the server ordered them."""
    headers = [
        "ID",
        "STATUS",
        "RUNTIME",
        "AGENT",
        "CHANNEL",
        "MODEL",
        "MSGS",
        "TOKENS",
        "COST",
        "LAST ACTIVITY",
    ]
    rows = (
        [
            session.id,
            enum_word(session_pb2.SessionStatus.DESCRIPTOR, session.status),
            enum_word(session_pb2.RuntimeState.DESCRIPTOR, session.runtime_state),
            session.agent or "-",
            session.channel or "-",
            session.model or "-",
            format_count(session.message_count),
            format_count(session.usage.total_tokens),
            format_money(session.usage.cost_micros),
            format_field_time(session, "last_activity_at"),
        ]
        for session in sessions
    )
    return table(headers, rows, right=(6, 7, 8))


def usage_pairs(usage: session_pb2.Usage) -> list[tuple[str, str]]:
    """The counters of a Usage as key/value pairs."""
    return [
        ("prompt tokens", format_count(usage.prompt_tokens)),
        ("completion tokens", format_count(usage.completion_tokens)),
        ("reasoning tokens", format_count(usage.reasoning_tokens)),
        ("cache read tokens", format_count(usage.cache_read_tokens)),
        ("cache write tokens", format_count(usage.cache_write_tokens)),
        ("total tokens", format_count(usage.total_tokens)),
        ("cost", format_money(usage.cost_micros)),
        ("requests", format_count(usage.request_count)),
        ("errors", format_count(usage.error_count)),
    ]


def session_details(session: session_pb2.Session) -> str:
    """Every field of a session worth reading, one per line."""
    labels = ", ".join(f"{key}={value}" for key, value in sorted(session.labels.items()))
    pairs = [
        ("id", session.id),
        ("tenant", session.tenant),
        ("status", enum_word(session_pb2.SessionStatus.DESCRIPTOR, session.status)),
        ("end reason", session.end_reason or "-"),
        ("kind", enum_word(session_pb2.SessionKind.DESCRIPTOR, session.kind)),
        ("runtime", enum_word(session_pb2.RuntimeState.DESCRIPTOR, session.runtime_state)),
        ("current turn", session.current_turn_id or "-"),
        ("turn started", format_field_time(session, "turn_started_at")),
        ("agent", session.agent or "-"),
        ("model", session.model or "-"),
        ("channel", session.channel or "-"),
        ("room", session.room_id or "-"),
        ("sender", session.sender_id or "-"),
        ("owner", session.owner_id or "-"),
        ("dataset", session.dataset_id or "-"),
        ("display name", session.display_name or "-"),
        ("goal", one_line(session.goal) if session.goal else "-"),
        ("labels", labels or "-"),
        ("runtime instance", session.runtime_instance or "-"),
        (
            "parent",
            f"{session.parent_id} (up to seq {session.fork_seq})" if session.parent_id else "-",
        ),
        ("started", format_field_time(session, "started_at")),
        ("last activity", format_field_time(session, "last_activity_at")),
        ("ended", format_field_time(session, "ended_at")),
        ("updated", format_field_time(session, "updated_at")),
        ("messages", format_count(session.message_count)),
        ("turns", format_count(session.turn_count)),
        ("tool calls", format_count(session.tool_call_count)),
        ("last seq", str(session.last_seq)),
        *usage_pairs(session.usage),
        ("budget", format_money(session.budget_micros) if session.budget_micros else "-"),
        ("revision", str(session.revision)),
        ("etag", session.etag),
    ]
    return key_values(pairs)


def message_summary(message: message_pb2.Message) -> str:
    """A message's content on one line, with its tool calls named."""
    parts = [one_line(message.content)] if message.content else []
    parts.extend(
        f"→ {call.name}({one_line(call.arguments_json, 40)})" for call in message.tool_calls
    )
    if message.tool_call_id:
        parts.insert(0, f"[{message.tool_call_id}]")
    if message.status not in (
        message_pb2.MESSAGE_STATUS_UNSPECIFIED,
        message_pb2.MESSAGE_STATUS_COMPLETE,
    ):
        parts.append(f"({enum_word(message_pb2.MessageStatus.DESCRIPTOR, message.status)})")
    return " ".join(parts)


def message_table(messages: Iterable[message_pb2.Message]) -> str:
    """Messages, one per row, content cut to one line."""
    rows = (
        [
            str(message.seq),
            format_field_time(message, "created_at"),
            enum_word(message_pb2.Role.DESCRIPTOR, message.role),
            message_summary(message),
        ]
        for message in messages
    )
    return table(["SEQ", "TIME", "ROLE", "CONTENT"], rows, right=(0,))


def message_line(message: message_pb2.Message) -> str:
    """A message as one line of a live tail."""
    return (
        f"#{message.seq}  {format_field_time(message, 'created_at')}  "
        f"{enum_word(message_pb2.Role.DESCRIPTOR, message.role)}: {message_summary(message)}"
    )


def stats_details(stats: stats_service_pb2.Stats) -> str:
    """The aggregates of GetStats, one per line."""
    pairs = [
        ("sessions", format_count(stats.session_count)),
        ("active", format_count(stats.active_count)),
        ("running", format_count(stats.running_count)),
        ("abandoned", format_count(stats.abandoned_count)),
        ("completed", format_count(stats.completed_count)),
        ("failed", format_count(stats.failed_count)),
        ("cancelled", format_count(stats.cancelled_count)),
        ("unknown", format_count(stats.unknown_count)),
        ("success rate", format_success_rate(stats)),
        ("messages", format_count(stats.message_count)),
        *usage_pairs(stats.usage),
        ("average cost", format_money(stats.average_cost_micros)),
        ("total duration", format_duration(stats.total_duration_seconds)),
        ("average duration", format_duration(stats.average_duration_seconds)),
    ]
    return key_values(pairs)


def format_success_rate(stats: stats_service_pb2.Stats) -> str:
    """completed / (completed + failed) as a percentage; "-" while no session has
    completed or failed (the server's 0 then means "no answer", not "all failed")."""
    if stats.completed_count + stats.failed_count == 0:
        return "-"
    return f"{stats.success_rate * 100:.1f}%"


def model_cost_table(models: Iterable[stats_service_pb2.ModelCost]) -> str:
    """CostByModel, one model per row, as the server ordered them."""
    headers = [
        "MODEL",
        "SESSIONS",
        "REQUESTS",
        "ERRORS",
        "PROMPT",
        "COMPLETION",
        "REASONING",
        "CACHE READ",
        "TOTAL TOKENS",
        "COST",
    ]
    rows = (
        [
            model.model,
            format_count(model.session_count),
            format_count(model.usage.request_count),
            format_count(model.usage.error_count),
            format_count(model.usage.prompt_tokens),
            format_count(model.usage.completion_tokens),
            format_count(model.usage.reasoning_tokens),
            format_count(model.usage.cache_read_tokens),
            format_count(model.usage.total_tokens),
            format_money(model.usage.cost_micros),
        ]
        for model in models
    )
    return table(headers, rows, right=range(1, 10))


def event_detail(event: event_pb2.SessionEvent) -> str:
    """What changed, in a few words, for one event."""
    session = event.session
    kind = event.type
    if kind == event_pb2.EVENT_TYPE_MESSAGES_APPENDED:
        last = event.messages[-1] if event.messages else None
        text = f"+{len(event.messages)} message(s), last seq {session.last_seq}"
        if last is not None:
            role = enum_word(message_pb2.Role.DESCRIPTOR, last.role)
            text += f": {role}: {one_line(last.content, 60)}"
        return text
    if kind == event_pb2.EVENT_TYPE_MESSAGE_UPDATED and event.messages:
        message = event.messages[-1]
        role = enum_word(message_pb2.Role.DESCRIPTOR, message.role)
        return f"#{message.seq} {role}: {one_line(message.content, 60)}"
    if kind in (event_pb2.EVENT_TYPE_MESSAGE_POPPED, event_pb2.EVENT_TYPE_MESSAGES_CLEARED):
        return f"removed {event.removed_count}"
    if kind == event_pb2.EVENT_TYPE_USAGE_RECORDED:
        usage = session.usage
        return f"tokens {format_count(usage.total_tokens)}, cost {format_money(usage.cost_micros)}"
    if kind == event_pb2.EVENT_TYPE_RUNTIME_STATE_CHANGED:
        turn = f" turn {session.current_turn_id}" if session.current_turn_id else ""
        return enum_word(session_pb2.RuntimeState.DESCRIPTOR, session.runtime_state) + turn
    if kind in (event_pb2.EVENT_TYPE_SESSION_DELETED, event_pb2.EVENT_TYPE_SESSION_PURGED):
        return ""
    status = enum_word(session_pb2.SessionStatus.DESCRIPTOR, session.status)
    reason = f" ({session.end_reason})" if session.end_reason else ""
    return f"{status}{reason}"


def event_line(event: event_pb2.SessionEvent) -> str:
    """One event as one line of ``sessiond watch``."""
    return "  ".join(
        [
            f"{event.revision:>6}",
            format_field_time(event, "time"),
            f"{enum_word(event_pb2.EventType.DESCRIPTOR, event.type):<21}",
            event.session_id,
            event_detail(event),
        ]
    ).rstrip()


# The words the CLI and the dashboard accept for statuses and sort orders.
STATUS_WORDS = {
    word: session_pb2.SessionStatus.Value(name)
    for word, name in enum_words(session_pb2.SessionStatus.DESCRIPTOR).items()
}
ORDER_WORDS = {
    "last-activity": session_service_pb2.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT,
    "started": session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT,
    "ended": session_service_pb2.SESSION_ORDER_FIELD_ENDED_AT,
    "cost": session_service_pb2.SESSION_ORDER_FIELD_COST,
    "tokens": session_service_pb2.SESSION_ORDER_FIELD_TOKENS,
}

# Every enum value name of the API, mapped to the word enum_word prints.
_ENUM_NAME_WORDS = {
    value.name: "unspecified"
    if value.name.endswith("_UNSPECIFIED")
    else enum_word(enum, value.number)
    for enum in (
        session_pb2.SessionStatus.DESCRIPTOR,
        session_pb2.RuntimeState.DESCRIPTOR,
        session_pb2.SessionKind.DESCRIPTOR,
        message_pb2.Role.DESCRIPTOR,
        message_pb2.MessageStatus.DESCRIPTOR,
        event_pb2.EventType.DESCRIPTOR,
    )
    for value in enum.values
}
_ENUM_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
