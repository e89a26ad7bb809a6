"""The requests the benchmark sends, built once and serialised.

Every scenario's traffic is defined here, so a reader can see exactly what
"an append" or "an agent turn" means: a 1 KB user message, a turn of
ListMessages(last_n=20) + AppendMessages(user, assistant) + RecordUsage, and
so on. Builders return serialised bytes (see loadgen: workers send bytes).

The load never reads what an append answers, so its appends ask for the
LEAN view (seq, id and created_at of each message and the session's guards,
not the whole session and the message bodies), as a runtime that ignores the
answer would; the scenarios' names say "lean view". One scenario asks for
the FULL view, to show what the echoed session and bodies cost.

Filled sessions are synthetic but shaped like real ones: two agents, three
channels, four models, distinct start times one second apart, and usage on
every session, so filters, sorts and aggregates touch realistic rows.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from sessiond.v1 import (
    event_pb2,
    message_pb2,
    message_service_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)

from bench.loadgen import Call

SESSION_SERVICE = "/sessiond.v1.SessionService"
MESSAGE_SERVICE = "/sessiond.v1.MessageService"
STATS_SERVICE = "/sessiond.v1.StatsService"
APPEND = f"{MESSAGE_SERVICE}/AppendMessages"
LIST_MESSAGES = f"{MESSAGE_SERVICE}/ListMessages"
CREATE_SESSION = f"{SESSION_SERVICE}/CreateSession"
GET_SESSION = f"{SESSION_SERVICE}/GetSession"
LIST_SESSIONS = f"{SESSION_SERVICE}/ListSessions"
WATCH_SESSIONS = f"{SESSION_SERVICE}/WatchSessions"
RECORD_USAGE = f"{STATS_SERVICE}/RecordUsage"
GET_STATS = f"{STATS_SERVICE}/GetStats"
COST_BY_MODEL = f"{STATS_SERVICE}/CostByModel"

PAYLOAD_BYTES = 1024
MODELS = ("gpt-4.1", "claude-sonnet-4", "gemini-2.5-pro", "llama-3.3-70b")
AGENTS = ("agent-0", "agent-1")
CHANNELS = ("cli", "discord.main", "slack.ops")
# The agent the list scenario filters on: half of the filled sessions.
LIST_FILTER_AGENT = AGENTS[0]


def text(size: int, seed: str = "") -> str:
    """ASCII text of exactly ``size`` bytes (compressible, like prose)."""
    unit = f"{seed}The quick brown fox jumps over the lazy dog. "
    return (unit * (size // len(unit) + 1))[:size]


def message(role: int, size: int = PAYLOAD_BYTES) -> message_pb2.Message:
    return message_pb2.Message(role=role, content=text(size))  # type: ignore[arg-type]


LEAN = message_service_pb2.APPEND_VIEW_LEAN
FULL = message_service_pb2.APPEND_VIEW_FULL


def append_request(session_id: str, count: int, size: int = PAYLOAD_BYTES,
                   view: message_service_pb2.AppendView.ValueType = LEAN) -> bytes:
    """AppendMessages of ``count`` user messages of ``size`` bytes each."""
    request = message_service_pb2.AppendMessagesRequest(
        session_id=session_id,
        messages=[message(message_pb2.ROLE_USER, size) for _ in range(count)],
        view=view,
    )
    return request.SerializeToString()


def append_call(session_id: str, count: int = 1,
                view: message_service_pb2.AppendView.ValueType = LEAN) -> Call:
    return Call(APPEND, append_request(session_id, count, view=view))


def get_session_call(session_id: str) -> Call:
    request = session_service_pb2.GetSessionRequest(session_id=session_id)
    return Call(GET_SESSION, request.SerializeToString())


def read_last_call(session_id: str, last_n: int = 20) -> Call:
    request = message_service_pb2.ListMessagesRequest(session_id=session_id, last_n=last_n)
    return Call(LIST_MESSAGES, request.SerializeToString())


def usage_request(session_id: str, index: int) -> bytes:
    request = stats_service_pb2.RecordUsageRequest(
        session_id=session_id,
        model=MODELS[index % len(MODELS)],
        usage=session_pb2.Usage(
            prompt_tokens=1000 + index % 500,
            completion_tokens=200 + index % 100,
            reasoning_tokens=index % 50,
            cache_read_tokens=index % 300,
            cost_micros=1000 + index % 7000,
        ),
    )
    return request.SerializeToString()


def agent_turn(session_id: str) -> tuple[Call, ...]:
    """One agent turn: read context, store the exchange, record usage."""
    exchange = message_service_pb2.AppendMessagesRequest(
        session_id=session_id,
        messages=[
            message(message_pb2.ROLE_USER, 256),
            message(message_pb2.ROLE_ASSISTANT, PAYLOAD_BYTES),
        ],
        view=LEAN,
    )
    return (
        read_last_call(session_id, 20),
        Call(APPEND, exchange.SerializeToString()),
        Call(RECORD_USAGE, usage_request(session_id, 1)),
    )


def session_id_for(index: int) -> str:
    return f"bench-{index:08d}"


def create_session_request(session_id: str, index: int = 0, started_us: int = 0) -> bytes:
    """CreateSession of a synthetic session; started_us 0 means server time."""
    kinds = (session_pb2.SESSION_KIND_AUTONOMOUS, session_pb2.SESSION_KIND_INTERACTIVE)
    session = session_pb2.Session(
        id=session_id,
        kind=kinds[index % 2],
        channel=CHANNELS[index % len(CHANNELS)],
        agent=AGENTS[index % len(AGENTS)],
        model=MODELS[index % len(MODELS)],
        owner_id=f"owner-{index % 97}",
        display_name=f"benchmark session {index}",
        labels={"bench": "1"},
    )
    if started_us:
        session.started_at.CopyFrom(
            timestamp_pb2.Timestamp(
                seconds=started_us // 1_000_000, nanos=started_us % 1_000_000 * 1000
            )
        )
    return session_service_pb2.CreateSessionRequest(session=session).SerializeToString()


def fill_session_calls(index: int, base_us: int) -> tuple[Call, ...]:
    """The calls that create filled session ``index`` with its usage."""
    session_id = session_id_for(index)
    started_us = base_us + index * 1_000_000
    return (
        Call(CREATE_SESSION, create_session_request(session_id, index, started_us)),
        Call(RECORD_USAGE, usage_request(session_id, index)),
    )


def list_sessions_request(page_size: int, page_token: str = "",
                          skip_total_size: bool = False) -> bytes:
    """ListSessions with a filter (one agent: half the sessions) and a sort. total_size
    is counted on a listing's first page unless skipped, and carried by the token."""
    request = session_service_pb2.ListSessionsRequest(
        filter=session_pb2.SessionFilter(agents=[LIST_FILTER_AGENT]),
        order_by=session_service_pb2.SESSION_ORDER_FIELD_STARTED_AT,
        page_size=page_size,
        page_token=page_token,
        skip_total_size=skip_total_size,
    )
    return request.SerializeToString()


def watch_request() -> bytes:
    return session_service_pb2.WatchSessionsRequest(start_revision=0).SerializeToString()


def watch_response_sample(session_id: str = "bench-watch-0") -> bytes:
    """A WatchSessionsResponse shaped like the one an append produces.

    The fan-out ceiling pushes these bytes, so both fan-outs move the same
    amount of data per event.
    """
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    session = session_pb2.Session(
        id=session_id,
        tenant="default",
        kind=session_pb2.SESSION_KIND_INTERACTIVE,
        status=session_pb2.SESSION_STATUS_ACTIVE,
        runtime_state=session_pb2.RUNTIME_STATE_IDLE,
        message_count=1000,
        last_seq=1000,
        revision=123456,
        etag="etag-123456",
        started_at=now,
        last_activity_at=now,
        updated_at=now,
    )
    appended = message(message_pb2.ROLE_USER)
    appended.session_id = session_id
    appended.seq = 1000
    appended.created_at.CopyFrom(now)
    appended.updated_at.CopyFrom(now)
    response = session_service_pb2.WatchSessionsResponse(
        type=session_service_pb2.WATCH_RESPONSE_TYPE_EVENTS,
        revision=123456,
        events=[
            event_pb2.SessionEvent(
                type=event_pb2.EVENT_TYPE_MESSAGES_APPENDED,
                revision=123456,
                time=now,
                session_id=session_id,
                session=session,
                messages=[appended],
            )
        ],
        time=now,
    )
    return response.SerializeToString()
