"""The storage interface: one protocol that every backend implements.

The store is written in revisions. Every write that changes something takes
the next store-wide revision at a single serialisation point and records its
events in the change log in the same transaction, so commit order is revision
order and no commit lacks its events. Records are the ``sessiond.v1`` protobuf
messages themselves (plain data, no gRPC), which saves a conversion layer on
every call. Every method takes a :class:`Scope`, and every query filters by it,
so a mistake in the API layer cannot cross tenants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol

from sessiond.v1 import (
    event_pb2,
    message_pb2,
    session_pb2,
    session_service_pb2,
    stats_service_pb2,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """Who is asking: the tenant, and which sessions within it they may see.

    ``sees_all`` grants every session of the tenant (admins, and everyone when
    authentication is off). Otherwise a caller sees sessions it owns and those
    of the datasets it is granted.
    """

    tenant: str = "default"
    user_id: str = ""
    dataset_ids: frozenset[str] = frozenset()
    sees_all: bool = True

    def can_see(self, tenant: str, owner_id: str, dataset_id: str) -> bool:
        """The same rule the SQL applies, for events checked in Python."""
        if tenant != self.tenant:
            return False
        if self.sees_all:
            return True
        return (bool(self.user_id) and owner_id == self.user_id) or (
            dataset_id in self.dataset_ids
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One event of the change log, with what is needed to scope and filter it."""

    revision: int
    tenant: str
    owner_id: str
    dataset_id: str
    event: event_pb2.SessionEvent


@dataclasses.dataclass(frozen=True, slots=True)
class MessageQuery:
    """What ListMessages asks for; the API layer has validated the mode."""

    page_size: int = 100
    descending: bool = False
    after_seq: int = 0
    after_time_micros: int = 0
    last_n: int = 0
    last_turns: int = 0
    # Keyset cursor: the seq of the last message of the previous page.
    cursor_seq: int | None = None
    max_messages: int = 1000
    # A page stops once the bytes of the messages before the next one reach this.
    max_bytes: int = 2 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[session_pb2.Session]
    # Sort key values of the last row, when there may be more rows.
    next_cursor: tuple[int, str] | None
    # The number of matching sessions; None when the listing was asked not to count.
    total_size: int | None
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class MessagePage:
    messages: list[message_pb2.Message]
    next_cursor: int | None
    truncated: bool
    revision: int
    # The page stopped early because of max_bytes (more messages follow or were left out).
    size_limited: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class UsageResult:
    session_usage: session_pb2.Usage
    model_usage: session_pb2.Usage
    budget_micros: int
    duplicate: bool
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class MessagesResult:
    messages: list[message_pb2.Message]
    session: session_pb2.Session
    revision: int


#: Called by the store after each commit with the changes it made, in
#: revision order, on the event loop's thread.
ChangeListener = Callable[[Sequence[Change]], None]


class SessionStore(Protocol):
    """Everything sessiond stores, behind one interface."""

    async def open(self) -> None:
        """Migrate the schema and start the writer; refuse a newer schema."""

    async def close(self) -> None:
        """Finish queued writes and close every connection."""

    def add_listener(self, listener: ChangeListener) -> None:
        """Register a listener for committed changes."""

    @property
    def revision(self) -> int:
        """The latest committed store revision."""

    @property
    def compacted_revision(self) -> int:
        """The highest revision removed from the change log (0 if none)."""

    # Sessions.
    async def create_session(
        self, scope: Scope, session: session_pb2.Session,
        shared_state_deltas: Sequence[session_pb2.SharedStateDelta] = (),
    ) -> tuple[session_pb2.Session, bool, int]: ...
    async def get_session(
        self, scope: Scope, session_id: str
    ) -> tuple[session_pb2.Session, int]: ...
    async def update_session(
        self, scope: Scope, session: session_pb2.Session, paths: Sequence[str], etag: str
    ) -> tuple[session_pb2.Session, int]: ...
    async def delete_session(self, scope: Scope, session_id: str, etag: str) -> tuple[int, int]: ...
    async def list_sessions(
        self,
        scope: Scope,
        filter: session_pb2.SessionFilter,
        order_by: session_service_pb2.SessionOrderField.ValueType,
        ascending: bool,
        page_size: int,
        cursor: tuple[int, str] | None,
        max_bytes: int = 2 << 20,
        count_total: bool = True,
    ) -> SessionPage: ...
    async def touch_session(
        self, scope: Scope, session: session_pb2.Session
    ) -> tuple[session_pb2.Session, bool, int]: ...
    async def end_session(
        self,
        scope: Scope,
        session_id: str,
        status: session_pb2.SessionStatus.ValueType,
        reason: str,
        ended_at_micros: int,
    ) -> tuple[session_pb2.Session, int]: ...
    async def set_runtime_state(
        self,
        scope: Scope,
        session_id: str,
        state: session_pb2.RuntimeState.ValueType,
        turn_id: str,
        turn_started_at_micros: int,
        runtime_instance: str,
    ) -> tuple[session_pb2.Session, int]: ...
    async def fork_session(
        self, scope: Scope, source_id: str, up_to_seq: int, new_id: str, display_name: str
    ) -> tuple[session_pb2.Session, bool, int]: ...
    async def reconcile_sessions(
        self, scope: Scope, runtime_instance: str, keep_ids: Sequence[str], reason: str,
        limit: int
    ) -> tuple[list[str], int, bool]: ...
    async def purge_sessions(
        self,
        scope: Scope,
        last_activity_before_micros: int,
        keep_newest: int,
        statuses: Sequence[session_pb2.SessionStatus.ValueType],
        dry_run: bool,
        limit: int,
    ) -> tuple[int, bool, int]: ...

    # Messages.
    async def append_messages(
        self,
        scope: Scope,
        session_id: str,
        messages: Sequence[message_pb2.Message],
        expected_last_seq: int | None,
        state_delta: session_pb2.StateDelta | None = None,
        shared_state_deltas: Sequence[session_pb2.SharedStateDelta] = (),
        *,
        lean: bool = False,
    ) -> MessagesResult: ...
    async def list_messages(
        self, scope: Scope, session_id: str, query: MessageQuery
    ) -> MessagePage: ...
    async def pop_message(
        self, scope: Scope, session_id: str, expected_seq: int | None
    ) -> MessagesResult: ...
    async def update_last_message(
        self,
        scope: Scope,
        session_id: str,
        message: message_pb2.Message,
        paths: Sequence[str],
        expected_seq: int | None,
        max_message_bytes: int,
    ) -> MessagesResult: ...
    async def clear_messages(
        self, scope: Scope, session_id: str
    ) -> tuple[int, session_pb2.Session, int]: ...
    async def replace_messages(
        self,
        scope: Scope,
        session_id: str,
        after_seq: int,
        messages: Sequence[message_pb2.Message],
        expected_last_seq: int,
        etag: str,
    ) -> tuple[MessagesResult, int]: ...
    async def get_shared_state(
        self, scope: Scope, app: str, user_id: str
    ) -> session_pb2.SharedState: ...
    async def update_shared_state(
        self, scope: Scope, app: str, user_id: str, delta: session_pb2.StateDelta, etag: str
    ) -> session_pb2.SharedState: ...
    async def delete_messages(
        self, scope: Scope, session_id: str, up_to_seq: int, expected_last_seq: int | None
    ) -> tuple[int, session_pb2.Session, int]: ...
    async def search_messages(
        self,
        scope: Scope,
        query: str,
        session_ids: Sequence[str],
        page_size: int,
        cursor: int | None,
        max_bytes: int,
    ) -> tuple[list[message_pb2.Message], int | None, int]: ...

    # Usage and stats.
    async def record_usage(
        self,
        scope: Scope,
        session_id: str,
        model: str,
        usage: session_pb2.Usage,
        errored: bool,
        request_id: str,
    ) -> UsageResult: ...
    async def get_stats(
        self, scope: Scope, filter: session_pb2.SessionFilter
    ) -> tuple[stats_service_pb2.Stats, int]: ...
    async def cost_by_model(
        self, scope: Scope, filter: session_pb2.SessionFilter
    ) -> tuple[list[stats_service_pb2.ModelCost], int]: ...

    # Change log.
    async def read_changes(self, from_revision: int, limit: int, from_idx: int = 0,
                           max_events: int = 0) -> list[Change]:
        """Changes of at most ``limit`` revisions from ``from_revision`` on, in order.

        Whole revisions, except that the first starts at its ``from_idx``-th
        event and, when ``max_events`` is positive, the read stops after that
        many events, possibly inside a revision (so a reader can go through
        a revision of any size a bounded piece at a time).
        Raises Compacted when from_revision <= compacted_revision.
        """
    def initial_state(
        self, scope: Scope, session_ids: Sequence[str]
    ) -> AsyncGenerator[tuple[list[session_pb2.Session], int], None]:
        """Every visible session (or those named), a page at a time, all read in
        one snapshot; each page comes with the revision it was read at."""
    async def compact(self, keep_revisions: int, max_age_seconds: float,
                      max_bytes: int = 0) -> int:
        """Drop old change log entries (``compaction_target``); returns the compacted revision."""
    async def tenants(self) -> list[str]:
        """Every tenant that has a session, in order (retention visits each)."""

    # Maintenance.
    async def check_consistency(self) -> list[str]:
        """Integrity check and counter recounts; an empty list means healthy."""
