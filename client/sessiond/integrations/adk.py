"""Google ADK's ``BaseSessionService`` on sessiond.

``SessiondSessionService`` replaces ``InMemorySessionService`` or
``DatabaseSessionService`` in ``Runner(..., session_service=...)``::

    session_service = SessiondSessionService(client=AsyncClient("127.0.0.1:50051"))

It uses sessiond's own model directly, with nothing stored twice:

* an ADK session is a sessiond session; ADK scopes a session id per app and
  user, sessiond per tenant, so the sessiond id is ``app/user/session`` (see
  ``sessiond_id``), with ``agent`` = the app name and ``owner_id`` = the user
  id kept as fields the server filters by; its session-scoped state is the
  session's ``state_json``;
* ``app:`` and ``user:`` state is sessiond shared state (app, and app plus
  user), read with GetSharedState and merged into ``Session.state`` with the
  prefixes, as ADK's own services do; ``temp:`` state is never stored;
* an event is one message (id = the event id, so retries are safe): the
  event as ADK serialises it in a content block of type ``adk.event``, and
  the role, text and tool calls beside it. ``create_session`` is one
  CreateSession carrying the app and user keys; ``append_event`` is one
  AppendMessages carrying the session, app and user deltas: the event and all
  its state changes commit together or not at all;
* the event's timestamp is the message's ``event_time``, so
  ``after_timestamp`` reads are ListMessages ``after_time`` reads;
* staleness (ADK's ``StaleSessionError``) is sessiond's optimistic
  concurrency: the append carries the last_seq the session object was read at.

Requires ``pip install 'sessiond[adk]'``; ADK is imported with this module only.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.sessions._session_util import extract_json_safe_state_delta
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session
from google.adk.sessions.state import State
from google.protobuf.timestamp_pb2 import Timestamp

try:  # ADK 2.x names the error privately; it is a ValueError either way.
    from google.adk.errors._stale_session_error import StaleSessionError
except ImportError:  # pragma: no cover - older ADK
    StaleSessionError = ValueError  # type: ignore[misc,assignment]

from sessiond.aio import AsyncClient
from sessiond.errors import Aborted, AlreadyExists, NotFound
from sessiond.integrations.history import StoredHistory, payload_message, payload_of
from sessiond.v1 import message_pb2, message_service_pb2, session_pb2, session_service_pb2

#: The content block type that holds an ADK event.
EVENT_BLOCK = "adk.event"
#: The most sessions list_sessions returns (ListSessions pages of 500).
LIST_PAGE = 500


#: What ``sessiond_id`` escapes in each part: the separator, the escape itself, white
#: space and control characters (sessiond ids may not start or end with white space).
_ESCAPED = re.compile(r"[%/\s\x00-\x1f\x7f]")


def _escape(part: str) -> str:
    return _ESCAPED.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), part)


def sessiond_id(app_name: str, user_id: str, session_id: str) -> str:
    """The sessiond session id of ADK's session ``session_id`` of ``user_id`` in ``app_name``.

    ``app/user/session``, each part as given but for ``%``, ``/``, white space and control
    characters, percent-escaped (``%25``, ``%2F``, ...): readable (``shop/ada@example.com/s1``),
    and unambiguous, so ``adk_ids`` reads it back. sessiond's id limit (256 bytes) bounds
    the three together; a longer id is refused by the server naming ``session.id``.
    """
    return "/".join(_escape(part) for part in (app_name, user_id, session_id))


def adk_ids(stored_id: str) -> tuple[str, str, str] | None:
    """``(app_name, user_id, session_id)`` of a ``sessiond_id``; None for any other id."""
    parts = stored_id.split("/")
    if len(parts) != 3:
        return None
    ids = (unquote(parts[0]), unquote(parts[1]), unquote(parts[2]))
    return ids if sessiond_id(*ids) == stored_id else None


def _delta(values: dict[str, Any]) -> session_pb2.StateDelta:
    return session_pb2.StateDelta(set={key: json.dumps(value, ensure_ascii=False)
                                       for key, value in values.items()})


def _shared_deltas(app_name: str, user_id: str, deltas: dict[str, dict[str, Any]]
                   ) -> list[session_pb2.SharedStateDelta]:
    """The app: and user: keys of ADK's split state delta as sessiond shared state deltas."""
    shared = []
    if deltas["app"]:
        shared.append(session_pb2.SharedStateDelta(app=app_name, delta=_delta(deltas["app"])))
    if deltas["user"]:
        shared.append(session_pb2.SharedStateDelta(app=app_name, user_id=user_id,
                                                   delta=_delta(deltas["user"])))
    return shared


def _micros(seconds: float) -> int:
    """ADK's float seconds in microseconds, rounded down (after_time is inclusive)."""
    return math.floor(seconds * 1_000_000)


def _seconds(timestamp: Any) -> float:
    return float(timestamp.ToMicroseconds()) / 1e6


def _last_update(stored: session_pb2.Session) -> float:
    """ADK's last_update_time: the newest event's own time (last_event_at), or the
    session's last activity while it has no events."""
    if stored.HasField("last_event_at"):
        return _seconds(stored.last_event_at)
    return _seconds(stored.last_activity_at)


def event_to_message(event: Event) -> message_pb2.Message:
    """One ADK event as a sessiond message (the event kept whole, as ADK serialises it)."""
    parts = event.content.parts if event.content and event.content.parts else []
    text = "\n".join(part.text for part in parts if part.text and not part.thought)
    calls = [message_pb2.ToolCall(id=call.id or "", name=call.name or "",
                                  arguments_json=json.dumps(call.args or {}, default=str))
             for call in event.get_function_calls()]
    responses = event.get_function_responses()
    if event.author == "user":
        role = message_pb2.ROLE_USER
    elif responses:
        role = message_pb2.ROLE_TOOL
    else:
        role = message_pb2.ROLE_ASSISTANT
    message = payload_message(EVENT_BLOCK, event.model_dump_json(exclude_none=True), role,
                              text, tool_calls=calls, name=event.author)
    message.id = event.id
    message.event_time.FromMicroseconds(_micros(event.timestamp))
    if responses and responses[0].id:
        message.tool_call_id = responses[0].id
    return message


def message_to_event(message: message_pb2.Message) -> Event | None:
    """The ADK event a message holds; None for a message written by something else."""
    payload = payload_of(message, EVENT_BLOCK)
    return None if payload is None else Event.model_validate_json(payload)


class SessiondSessionService(BaseSessionService):
    """An ADK session service whose sessions, events and state live in sessiond.

    ``client`` may be shared between services, threads and event loops.
    Session ids are ADK's, scoped per app and user (``sessiond_id``): two users
    may each have a session "s1". Generated ids are UUIDs.
    """

    def __init__(self, *, client: AsyncClient) -> None:
        self.client = client

    async def _shared(self, app_name: str, user_id: str) -> dict[str, Any]:
        answer = await self.client.get_shared_state(app=app_name, user_id=user_id)
        state: dict[str, Any] = json.loads(answer.state.state_json)
        return state

    async def _merged(self, app_name: str, user_id: str,
                      session_state: dict[str, Any]) -> dict[str, Any]:
        merged = dict(session_state)
        for key, value in (await self._shared(app_name, "")).items():
            merged[State.APP_PREFIX + key] = value
        for key, value in (await self._shared(app_name, user_id)).items():
            merged[State.USER_PREFIX + key] = value
        return merged

    def _adk_session(self, session_id: str, stored: session_pb2.Session,
                     state: dict[str, Any], events: list[Event]) -> Session:
        session = Session(id=session_id, app_name=stored.agent, user_id=stored.owner_id,
                          state=state, events=events,
                          last_update_time=_last_update(stored))
        session._storage_update_marker = str(stored.last_seq)
        return session

    async def create_session(self, *, app_name: str, user_id: str,
                             state: dict[str, Any] | None = None,
                             session_id: str | None = None) -> Session:
        deltas = extract_json_safe_state_delta(state or {})
        # The id is chosen here when ADK gives none, and started_at is this call's own
        # time: a retry of this request (its answer lost) is identical and comes back
        # created = false with this started_at, while another create of the same id
        # differs in started_at and is ALREADY_EXISTS.
        session_id = session_id or str(uuid.uuid4())
        wanted = session_pb2.Session(id=sessiond_id(app_name, user_id, session_id),
                                     agent=app_name, owner_id=user_id,
                                     state_json=json.dumps(deltas["session"],
                                                           ensure_ascii=False))
        wanted.started_at.FromMicroseconds(time.time_ns() // 1000)
        try:
            # One commit: the session and its app: and user: keys, or nothing.
            answer = await self.client.create_session(
                session=wanted, shared_state_deltas=_shared_deltas(app_name, user_id, deltas))
        except AlreadyExists as error:
            raise AlreadyExistsError(f"Session with id {session_id} already exists.") from error
        if not answer.created and answer.session.started_at != wanted.started_at:
            raise AlreadyExistsError(f"Session with id {session_id} already exists.")
        merged = await self._merged(app_name, user_id, deltas["session"])
        return self._adk_session(session_id, answer.session, merged, [])

    async def _stored(self, app_name: str, user_id: str,
                      session_id: str) -> session_pb2.Session | None:
        try:
            stored = (await self.client.get_session(
                session_id=sessiond_id(app_name, user_id, session_id))).session
        except NotFound:
            return None
        return stored if (stored.agent, stored.owner_id) == (app_name, user_id) else None

    async def get_session(self, *, app_name: str, user_id: str, session_id: str,
                          config: GetSessionConfig | None = None) -> Session | None:
        stored = await self._stored(app_name, user_id, session_id)
        if stored is None:
            return None
        history = StoredHistory(self.client, stored.id)
        config = config or GetSessionConfig()
        events: list[Event] = []
        if config.num_recent_events != 0:
            after = None
            if config.after_timestamp is not None:
                after = Timestamp()
                after.FromMicroseconds(_micros(config.after_timestamp))
            messages = await history.latest(config.num_recent_events, after_time=after)
            events = [e for e in map(message_to_event, messages) if e is not None]
        state = await self._merged(app_name, user_id, json.loads(stored.state_json))
        return self._adk_session(session_id, stored, state, events)

    async def list_sessions(self, *, app_name: str,
                            user_id: str | None = None) -> ListSessionsResponse:
        session_filter = session_pb2.SessionFilter(
            agents=[app_name], owner_ids=[user_id] if user_id is not None else [])
        app_state = await self._shared(app_name, "")
        user_states: dict[str, dict[str, Any]] = {}
        sessions: list[Session] = []
        async for stored in self.client.iter_sessions(
                filter=session_filter, ascending=True, page_size=LIST_PAGE,
                order_by=session_service_pb2.SESSION_ORDER_FIELD_LAST_ACTIVITY_AT):
            ids = adk_ids(stored.id)
            if ids is None or ids[:2] != (stored.agent, stored.owner_id):
                continue  # a session of this agent not written through ADK
            if stored.owner_id not in user_states:
                user_states[stored.owner_id] = await self._shared(app_name, stored.owner_id)
            state = json.loads(stored.state_json)
            state.update({State.APP_PREFIX + k: v for k, v in app_state.items()})
            state.update({State.USER_PREFIX + k: v
                          for k, v in user_states[stored.owner_id].items()})
            sessions.append(self._adk_session(ids[2], stored, state, []))
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        stored = await self._stored(app_name, user_id, session_id)
        if stored is None:
            return
        with contextlib.suppress(NotFound):  # deleted meanwhile: the outcome asked for
            await self.client.delete_session(session_id=stored.id)

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        return await self._shared(app_name, user_id)

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store the event and every state change it carries in one commit."""
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        deltas = extract_json_safe_state_delta(
            event.actions.state_delta if event.actions and event.actions.state_delta else {})
        shared = _shared_deltas(session.app_name, session.user_id, deltas)
        marker = session._storage_update_marker
        try:
            answer = await self.client.append_messages(
                session_id=sessiond_id(session.app_name, session.user_id, session.id),
                messages=[event_to_message(event)],
                expected_last_seq=int(marker) if marker is not None else None,
                state_delta=_delta(deltas["session"]), shared_state_deltas=shared,
                # Only the session's last_seq and last_event_at are read below: both
                # are in the lean view.
                view=message_service_pb2.APPEND_VIEW_LEAN)
        except NotFound as error:
            raise SessionNotFoundError(f"Session {session.id} not found.") from error
        except Aborted as error:
            raise StaleSessionError(
                f"session {session.id} changed in storage since this object was read "
                f"(last_seq {marker}); read it again") from error
        session._storage_update_marker = str(answer.session.last_seq)
        session.last_update_time = _last_update(answer.session)
        return self._commit_event_to_session(session, event)
